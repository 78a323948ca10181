"""Console entry points: ``gradient-probes-train`` and ``gradient-probes-report`` run the
installed copies of ``train.py`` and ``report.py`` (see :mod:`gradient_probes`)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: where train.py and its packages are: inside this package once installed from a wheel, the
#: repository itself in a clone (also under an editable install)
APP = HERE / "_app" if (HERE / "_app" / "train.py").exists() else HERE.parent


def _application() -> None:
    """Make the ports and experiments importable by the names they use, in this process only."""
    if str(APP) not in sys.path:
        sys.path.insert(0, str(APP))


def train() -> None:
    """``gradient-probes-train ARGS``, the same as ``python train.py ARGS`` in the clone."""
    _application()
    import train as app

    sys.exit(app.main())


def report() -> None:
    """``gradient-probes-report ARGS``, the same as ``python report.py ARGS`` in the clone."""
    _application()
    import report as app

    sys.exit(app.main())
