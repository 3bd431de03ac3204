"""Helpers shared by the tests and the benchmarks: numerics (error measures, poisoning) and timing;
the randomized sweep of every family against its reference (``sweep``, generators in ``sweeps/``)
and the pytest plugin of the GPU window (``window_plugin``)."""
