"""Benchmarks of qkscale, run as modules: ``python -m benchmarks.<name>``."""
