"""Performance claims with the command that reproduces them: ``python -m benchmarks.compare --preset NAME``."""
