"""Benchmarks (speed is measured here, never in tests); scripts under ``benchmarks/`` call these."""
