"""The diagnosis rules, by what they read: gradients and updates, units, the loss curve, the
model's input and output. Each is a function ``rule(run) -> [Finding]`` of a
:class:`probes.rules.common.RunFacts`; :func:`probes.diagnose` runs them all."""
