"""Helpers shared by the tests and the benchmarks (numerics, timing, shapes)."""
