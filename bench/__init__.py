"""Benchmarks of nixfarm against plain baselines (see docs/BENCHMARKS.md); not tests."""
