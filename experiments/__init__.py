"""What the command line needs besides models and probes: data, run directories, plots."""
