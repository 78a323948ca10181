"""The calibration corpus of the diagnosis: small faulty and healthy training setups.

Each faulty setup is written from the definition of one fault (bench/diagnosis_corpus/faulty.py),
each healthy one is an ordinary network trained the way its users train it
(bench/diagnosis_corpus/healthy.py); ``python bench/diagnosis.py`` runs every setup over several
seeds as a user would (``probes.check`` before training, ``probes.watch`` during, then
``monitor.diagnose()``) and counts which expected finding fired, and which healthy run got a
warning. The thresholds in probes/thresholds.py are set on these runs.
"""
