"""The performance benchmark: ``python bench/run.py`` (see run.py). A package so that its
modules import each other by name; it is not part of the installed wheel."""
