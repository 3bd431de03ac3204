"""Helpers shared by the tests and the benchmarks: numerics (error measures, poisoning) and timing."""
