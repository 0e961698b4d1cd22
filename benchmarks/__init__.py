"""Benchmarks: one command each (``python -m benchmarks.<name>``), each printing its figures and
a ratio against a baseline measured in the same run. ``python -m benchmarks`` runs them all."""
