"""Timing kernels honestly: on every device at once, compiled and warm, to completion.

Each kernel runs under ``shard_map`` on a one-axis mesh of all the devices
being calibrated, so a device's time includes whatever it shares with its
peers (a host's cores, a node's power budget), as in a real step. Compilation
and a warm-up call are excluded; every timed call ends in
``block_until_ready``; calls repeat until both a minimum count and a minimum
time are reached, spread over rounds, and every repeat's time is kept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pathsim.calibration.kernels import DTYPES, InputSpec, Kernel

AXIS = "devices"


@dataclass(frozen=True)
class Budget:
    """How hard to look at each kernel."""

    min_repeats: int
    max_repeats: int
    min_time_s: float  # keep repeating (up to max_repeats) until this much time has been timed


QUICK = Budget(min_repeats=6, max_repeats=30, min_time_s=0.05)
FULL = Budget(min_repeats=24, max_repeats=240, min_time_s=0.6)


def make_mesh(devices: int | None = None) -> Mesh:
    available = jax.devices()
    count = len(available) if devices is None else devices
    if not 1 <= count <= len(available):
        raise ValueError(f"asked for {count} devices, JAX sees {len(available)}")
    return Mesh(np.array(available[:count]), (AXIS,))


def _random_inputs(specs: tuple[InputSpec, ...], mesh: Mesh, seed: int):
    """Inputs of shape (devices, *spec.shape), generated on the devices themselves."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))

    def generate(key):
        out = []
        for key_i, spec in zip(jax.random.split(key, len(specs)), specs):
            shape = (n, *spec.shape)
            if spec.dtype == "int32":
                out.append(jax.random.randint(key_i, shape, 0, spec.high, dtype=jnp.int32))
            else:
                out.append(jax.random.normal(key_i, shape, dtype=DTYPES[spec.dtype]))
        return tuple(out)

    return jax.jit(generate, out_shardings=tuple(sharding for _ in specs))(jax.random.key(seed))


def on_every_device(body, mesh: Mesh, n_inputs: int):
    """jit(shard_map(body)) where each device sees its own slice without the leading device axis."""
    spec = PartitionSpec(AXIS)

    def per_device(*xs):
        outs = body(*(x[0] for x in xs))
        return jax.tree.map(lambda o: o[None], outs)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) * n_inputs, out_specs=spec))


def time_call(fn, args, repeats: int, min_time_s: float, max_repeats: int) -> list[float]:
    """Seconds per call (the caller has compiled and warmed `fn`)."""
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


class KernelTimer:
    """Times kernels in rounds: a shared machine drifts, so each shape is timed a little in every round, in a
    shuffled order, rather than all at once; compiled functions are kept between rounds, inputs are not."""

    def __init__(self, mesh: Mesh, budget: Budget, rounds: int):
        self.mesh, self.budget, self.rounds = mesh, budget, rounds
        self._compiled: dict[int, object] = {}

    def time(self, key: int, kernel: Kernel, seed: int) -> list[float]:
        """One round's repeats of `kernel` (compiled and warmed on first sight)."""
        args = _random_inputs(kernel.inputs, self.mesh, seed)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = on_every_device(kernel.body, self.mesh, len(kernel.inputs))
            jax.block_until_ready(fn(*args))  # compiles
        jax.block_until_ready(fn(*args))  # warms caches and the allocator
        per_round = -(-self.budget.min_repeats // self.rounds)
        return time_call(fn, args, per_round, self.budget.min_time_s / self.rounds, -(-self.budget.max_repeats // self.rounds))


class Progress:
    """A one-line progress bar on stderr (quiet when stderr is not a terminal, except every tenth)."""

    def __init__(self, total: int, label: str, stream=None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        width = 24
        filled = int(width * self.done / self.total)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.0f}s (eta {eta:4.0f}s) {what}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            print(line, file=self.stream, flush=True)
