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

- ``zb1p`` (ZB-H1, Qi et al. 2023): 1F1B with the backward split into input
  gradients and weight gradients, the latter run late to fill the bubbles:
  (P−1)(F+B−W) of idle instead of (P−1)(F+B+W), with 1F1B's peak memory.

- ``dualpipe`` (DeepSeek-V3 §3.2.1): two pipelines in opposite directions over
  the same stages (two copies of each stage's layers), a forward of one and a
  backward of the other overlapped in the steady state, zero-bubble weight
  gradients at the ends: DeepSeek-V3's Table 2 gives its bubble as
  (P/2−1)(F&B + B − 3W), with B the whole backward and W its weight part.

A new schedule is one function in SCHEDULES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Unit:
    """One chunk of work on a stage: the forward ("F") or backward ("B") of micro-batch `mb` through model chunk `chunk`."""

    kind: str  # F: forward; B: backward (with W units in the order: its input gradients only); W: weight gradients
    mb: int
    chunk: int = 0
    paired: bool = False  # runs overlapped with the unit after it (DualPipe's forward-and-backward chunk)


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


def zero_bubble(stages: int, micro_batches: int, virtual: int = 1, group: int | None = None) -> list[list[Unit]]:
    """ZB-H1 (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): 1F1B with each backward split into its input
    gradients (B), sent on down the pipeline at once, and its weight gradients (W), which stage s runs s units
    late, filling the waits for the next B. 1F1B's warm-up, so stage 0 still holds P micro-batches at most (stage
    s: P − s in flight plus s awaiting W); the bubble falls from (P−1)(F+B+W) to (P−1)(F+B−W)."""
    orders = []
    for s in range(stages):
        warmup = min(stages - s - 1, micro_batches)
        order = [Unit("F", mb) for mb in range(warmup)]
        waiting: list[int] = []  # micro-batches whose W is still to run, oldest first

        def backward(mb: int, lag: int) -> None:
            order.append(Unit("B", mb))
            waiting.append(mb)
            if len(waiting) > lag:
                order.append(Unit("W", waiting.pop(0)))

        for i in range(micro_batches - warmup):
            order.append(Unit("F", warmup + i))
            backward(i, s)
        for mb in range(micro_batches - warmup, micro_batches):
            backward(mb, 0)  # cool-down: a W after every B, the oldest first
        order += [Unit("W", mb) for mb in waiting]
        orders.append(order)
    return orders


def dualpipe(stages: int, micro_batches: int, virtual: int = 1, group: int | None = None) -> list[list[Unit]]:
    """DualPipe (DeepSeek-V3, arXiv:2412.19437 §3.2.1): micro-batches enter from both ends, half at stage 0 along
    chunk 0 (stages 0 → P−1), half at stage P−1 along chunk 1 (P−1 → 0), every stage holding both directions'
    copy of its blocks of layers; in the steady state a stage runs a forward of one direction and a backward of
    the other overlapped, each one's communication under the other's compute, and it fills the ends with
    zero-bubble weight gradients. The phases follow deepseek-ai/DualPipe's step(): per stage s, with h = min(s,
    P−1−s) and "phase 0" the direction its half of the pipeline starts with, (P/2−h−1)·2 forwards of phase 0;
    h+1 pairs of forwards of both phases; P/2−h−1 × (B, W, F) of phase 1; m/2−P+h+1 × two overlapped F&B pairs;
    P/2−h−1 × (B of phase 1, an F&B pair); h+1 × (B, B), the later ones leaving their W; P/2−h−1 × (W, B of
    phase 0 leaving its W); the W's left. Needs P even and m ≥ 2P, even."""
    P, m = stages, micro_batches
    H, half = P // 2, m // 2
    orders = []
    for s in range(P):
        h, flipped = min(s, P - 1 - s), int(s >= H)
        forwards, backwards = [0, 0], [0, 0]  # per direction: micro-batches started
        waiting: list[tuple[int, int]] = []  # (micro-batch, chunk) of backwards whose W is still to run
        order: list[Unit] = []

        def F(phase: int, paired: bool = False) -> None:
            c = phase ^ flipped
            order.append(Unit("F", c * half + forwards[c], c, paired))
            forwards[c] += 1

        def B(phase: int, later_w: bool = False) -> None:
            c = phase ^ flipped
            mb = c * half + backwards[c]
            backwards[c] += 1
            order.append(Unit("B", mb, c))
            if later_w:
                waiting.append((mb, c))
            else:
                order.append(Unit("W", mb, c))

        def W() -> None:
            mb, c = waiting.pop(0)
            order.append(Unit("W", mb, c))

        for _ in range((H - h - 1) * 2):
            F(0)
        for _ in range(h + 1):
            F(0)
            F(1)
        for _ in range(H - h - 1):
            B(1, later_w=True)
            W()
            F(1)
        for _ in range(half - P + h + 1):
            F(0, paired=True)
            B(1)
            F(1, paired=True)
            B(0)
        for _ in range(H - h - 1):
            B(1)
            F(1, paired=True)
            B(0)
        later = False
        for i in range(h + 1):  # the second half of these leave their weight gradients for the end
            later = later or (i == (h + 1) // 2 and h % 2 == 1)
            B(1, later_w=later)
            later = later or (i == (h + 1) // 2 and h % 2 == 0)
            B(0, later_w=later)
        for _ in range(H - h - 1):
            W()
            B(0, later_w=True)
        while waiting:
            W()
        orders.append(order)
    return orders


SCHEDULES: dict[str, Callable[..., list[list[Unit]]]] = {
    "gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved, "zb1p": zero_bubble, "dualpipe": dualpipe}


def peak_in_flight(order: list[Unit], chunks: int) -> list[int]:
    """Per model chunk of one stage, the most micro-batches whose forward has run and backward not yet (each holds
    its activations; with a split backward, until its weight gradients), at the moment the stage holds the most."""
    live = [0] * chunks
    best, best_total = list(live), 0
    frees = "W" if any(u.kind == "W" for u in order) else "B"
    for unit in order:
        if unit.kind not in ("F", frees):
            continue
        live[unit.chunk] += 1 if unit.kind == "F" else -1
        if sum(live) > best_total:
            best, best_total = list(live), sum(live)
    return best
