"""Calibration: time pathsim's kernels with JAX, fit the device model, and measure how far off it is.

Stages (each leaves a file the next reads, as in Vidur's profiling → model → simulation):
``kernels`` and ``collectives`` are the JAX microbenchmarks, ``harness`` times them,
``sweeps`` chooses shapes, ``fit`` turns samples into a :class:`pathsim.device.DeviceProfile`,
``validation`` predicts held-out shapes, ``end_to_end`` times a real expert-parallel
training step against pathsim's prediction of it. Importing this package does not import jax.
"""
