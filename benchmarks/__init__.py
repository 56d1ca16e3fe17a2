"""Benchmarks of ngdsym (run as ``python -m benchmarks.<name>``)."""
