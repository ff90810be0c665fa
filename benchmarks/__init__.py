"""Benchmarks (run with ``pytest benchmarks``; the full suite comes with the benchmark issue)."""
