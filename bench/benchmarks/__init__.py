"""One module per benchmark, each a function of (device, sizes, log, ...) returning the dict
that becomes ``details[device][name]`` in results.json.

Nothing is imported here: ``memory`` also runs as a child process (``python -m
bench.benchmarks.memory``), which should load only what it measures.
"""
