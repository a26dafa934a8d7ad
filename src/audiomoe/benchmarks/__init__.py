"""Benchmarks behind `audiomoe bench NAME` (speed is measured here, never in tests)."""
