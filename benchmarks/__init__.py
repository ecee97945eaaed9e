"""Benchmarks: accuracy (benchmarks.accuracy), controls and report; results under benchmarks/results/."""
