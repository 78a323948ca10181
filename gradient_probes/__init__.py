"""The application around the probes, installed under the project's own name.

``pip install`` puts the library at ``probes`` (import it in your projects) and the rest of
this repository (the Keras ports in ``models/``, ``experiments/``, ``train.py`` and
``report.py``) inside this package, at ``gradient_probes/_app``, so that installing the project
claims no generic top-level name such as ``models`` or ``train`` in a user's environment.
Those modules import each other by their top-level names, as they do in the clone
(``python train.py``); :mod:`gradient_probes.cli` puts ``_app`` on ``sys.path`` for the process
it runs, and nowhere else.
"""
