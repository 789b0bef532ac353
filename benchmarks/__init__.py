"""Benchmarks (`make bench`): each benchmarks/bench_*.py module exposes main(); run.py runs them in name order."""
