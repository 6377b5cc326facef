"""Pipeline schedules: the order in which each stage runs its micro-batches' forward and backward chunks.

A schedule is a function of (stages P, micro-batches m, virtual stages per
stage v) giving, per stage, its ordered :class:`Unit` s. Chunk ``c`` of stage
``s`` is virtual stage ``c·P + s`` (Megatron-LM's interleaving, Narayanan et al.
SC'21 §2.2), so a micro-batch's forward visits stages 0..P−1 for chunk 0, then
again for chunk 1, and so on. Dependencies are not part of a schedule: the
pipeline builder derives them (a forward chunk needs the previous virtual
stage's output, a backward chunk the next one's gradient).

- ``gpipe`` (Huang et al. 2019): all forwards, then all backwards. Bubble
  (P−1)/(m+P−1) of the step on uniform stages; every stage holds all m
  micro-batches' activations.
- ``1f1b`` (PipeDream-Flush, Narayanan et al. 2021): P−s−1 warm-up forwards on
  stage s, then one forward / one backward, then the remaining backwards. The
  same bubble as GPipe, but stage s holds at most min(m, P−s) micro-batches.
- ``interleaved`` (Narayanan et al. SC'21 §2.2): 1F1B over v model chunks per
  stage; the bubble is divided by v, at the cost of v× the point-to-point
  sends. A stage runs N consecutive micro-batches through a chunk before the
  next chunk (Megatron-LM's microbatch group per virtual stage; the Llama 3
  paper's N, §3.3.2), so m must be a multiple of N. N = P is SC'21's schedule
  (depth-first); N = m runs every micro-batch through a chunk first
  (breadth-first), with a longer warm-up (2(P−1) + (v−1)N chunks on stage 0) and
  more micro-batches in flight. N < P − 1 would deadlock.

A new schedule is one function in SCHEDULES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Unit:
    """One chunk of work on a stage: the forward ("F") or backward ("B") of micro-batch `mb` through model chunk `chunk`."""

    kind: str
    mb: int
    chunk: int = 0


def gpipe(stages: int, micro_batches: int, virtual: int = 1, group: int | None = None) -> list[list[Unit]]:
    forward = [Unit("F", mb, c) for c in range(virtual) for mb in range(micro_batches)]
    backward = [Unit("B", mb, c) for c in reversed(range(virtual)) for mb in range(micro_batches)]
    return [forward + backward for _ in range(stages)]


def _warm_up_then_alternate(stages: int, micro_batches: int, virtual: int, warmup_of: Callable[[int], int],
                            group: int | None = None) -> list[list[Unit]]:
    """Per stage: `warmup_of(stage)` forwards, then one forward and one backward in turn, then the backwards left.
    The k-th forward (and k-th backward) of a stage is micro-batch (k // (N·v))·N + k % N of chunk (k // N) % v for
    groups of N micro-batches (default P), backwards walking the chunks in reverse (v = 1: micro-batch k, chunk 0)."""
    total = micro_batches * virtual
    n = group or stages

    def unit(kind: str, k: int) -> Unit:
        chunk = (k // n) % virtual
        return Unit(kind, (k // (n * virtual)) * n + k % n, chunk if kind == "F" else virtual - 1 - chunk)

    orders = []
    for s in range(stages):
        warmup = min(warmup_of(s), total)
        order = [unit("F", k) for k in range(warmup)]
        for i in range(total - warmup):
            order += [unit("F", warmup + i), unit("B", i)]
        order += [unit("B", k) for k in range(total - warmup, total)]
        orders.append(order)
    return orders


def one_f_one_b(stages: int, micro_batches: int, virtual: int = 1, group: int | None = None) -> list[list[Unit]]:
    return _warm_up_then_alternate(stages, micro_batches, 1, lambda s: stages - s - 1)


def interleaved(stages: int, micro_batches: int, virtual: int = 2, group: int | None = None) -> list[list[Unit]]:
    """Megatron-LM's interleaved 1F1B: a longer warm-up, so every chunk of the first stage is under way."""
    n = group or stages
    return _warm_up_then_alternate(stages, micro_batches, virtual, lambda s: (stages - s - 1) * 2 + (virtual - 1) * n, n)


SCHEDULES: dict[str, Callable[..., list[list[Unit]]]] = {
    "gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved}


def peak_in_flight(order: list[Unit], chunks: int) -> list[int]:
    """Per model chunk of one stage, the most micro-batches whose forward has run and backward not yet (each holds
    its activations), at the moment the stage holds the most in total."""
    live = [0] * chunks
    best, best_total = list(live), 0
    for unit in order:
        live[unit.chunk] += 1 if unit.kind == "F" else -1
        if sum(live) > best_total:
            best, best_total = list(live), sum(live)
    return best
