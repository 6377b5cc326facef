"""HBM per chip during training: parameters, gradients, optimizer state, activations.

Mixed-precision bookkeeping as in ZeRO (Rajbhandari et al. 2020, §3): weights
and gradients in the model dtype, plus optimizer state per parameter — Adam
keeps an fp32 master copy, momentum and variance (12 bytes); Adafactor an fp32
master copy plus factored second moments (≈4 bytes); SGD the fp32 master copy.
With ``shard_optimizer`` (ZeRO-1) that state is split over the replicas of each
parameter, with ``shard_gradients`` (ZeRO-2) the gradients too (a chip keeps the
shard it updates: each bucket is reduce-scattered as it completes, and the
bucket in flight is not counted); with ``shard_parameters`` (ZeRO-3 / FSDP) the dense weights and
their gradients are split too, over the data ranks of a slice, and a chip holds
two layers' gathered weights at a time (the one computing, the one
prefetched). Activations follow :mod:`pathsim.model_math` for one micro-batch
without pipelining (every layer's activations are live at the end of the
forward pass); a pipeline stage (:class:`Held`) holds its own layers, the
input embedding on the first stage and the LM head on the last (a copy of each
when they are tied, as Megatron-LM does), and the activations of as many
micro-batches per layer as its schedule has in flight at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from pathsim.model_math import layer_activation_bytes, layer_params, layer_shapes
from pathsim.placement import Placement
from pathsim.units import format_id_ranges
from pathsim.workload import Layout, WorkloadConfig

OPTIMIZER_STATE_BYTES = {"adam": 12.0, "adafactor": 4.0, "sgd": 4.0}


class MemoryReport(BaseModel):
    parameters_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    total_bytes: float
    hbm_bytes: float
    headroom_bytes: float
    fits: bool
    note: str


@dataclass(frozen=True)
class Held:
    """What one pipeline stage's chips hold: its layers, whether it has the input embedding (first stage) and the
    LM head (last stage), and per layer the micro-batches whose activations its schedule keeps at once."""

    layers: tuple[int, ...]
    embedding: bool
    head: bool
    in_flight: tuple[int, ...]  # per entry of layers


def expert_slots_on_busiest_chip(workload: WorkloadConfig, placement: Placement | None, held: Held | None = None) -> int:
    """Expert slots, summed over the MoE layers (a stage's only, given `held`), on the chip hosting the most."""
    if placement is None:
        return 0
    if held is None:
        return placement.busiest_rank_slots(len(workload.model.moe_layers))
    index = {layer: j for j, layer in enumerate(workload.model.moe_layers)}
    return placement.busiest_rank_slots(len(index), [index[i] for i in held.layers if i in index])


def parameters_per_chip(workload: WorkloadConfig, layout: Layout, expert_slots: int,
                        held: Held | None = None) -> tuple[float, float]:
    """(dense, expert) parameters on a chip hosting `expert_slots` experts over its MoE layers; dense ones
    are split over tensor ranks."""
    model = workload.model
    s = layer_shapes(model)
    if held is not None:
        table = model.vocab * model.d_model
        dense = (sum(layer_params(model, i, s) for i in held.layers)
                 + table * (int(held.embedding) + int(held.head))) / layout.tensor
        return dense, expert_slots * s.expert_params / layout.expert_shard
    dense = sum(layer_params(model, i, s) for i in range(model.layers + 1)) / layout.tensor
    return dense, expert_slots * s.expert_params / layout.expert_shard


def optimizer_params_per_chip(workload: WorkloadConfig, layout: Layout, expert_slots: int, held: Held | None = None) -> float:
    """Parameters whose optimizer state a chip keeps and updates (ZeRO-1: its shard over each parameter's replicas;
    ZeRO-3 without ZeRO-1: its shard of the dense weights)."""
    dense, experts = parameters_per_chip(workload, layout, expert_slots, held)
    if workload.training.shard_optimizer:
        return dense / layout.data + experts / layout.expert_weight_copies
    return dense / layout.parameter_shards + experts


def gathered_weight_params(workload: WorkloadConfig, layout: Layout) -> float:
    """ZeRO-3 / FSDP: dense parameters held gathered on a chip at once, two of its largest layers (0 unsharded)."""
    if layout.parameter_shards == 1:
        return 0.0
    model = workload.model
    s = layer_shapes(model)
    largest = max(layer_params(model, i, s) for i in range(model.layers + 1))
    return 2.0 * largest / layout.tensor


def memory_per_chip(workload: WorkloadConfig, layout: Layout, expert_slots: int, hbm_bytes: float,
                    held: Held | None = None) -> MemoryReport:
    """HBM use of a chip hosting `expert_slots` experts over its MoE layers (pass the busiest chip's); `held`:
    a pipeline stage's chip."""
    model = workload.model
    dense, experts = parameters_per_chip(workload, layout, expert_slots, held)
    params = dense / layout.parameter_shards + experts
    gathered = gathered_weight_params(workload, layout)
    dtype = model.dtype_bytes
    updated = optimizer_params_per_chip(workload, layout, expert_slots, held)
    optimizer = OPTIMIZER_STATE_BYTES[workload.training.optimizer] * updated
    gradients = (updated if workload.training.shard_gradients else params) * dtype
    layer_bytes = [layer_activation_bytes(model, i, workload.training.recompute, layout.tensor,
                                          workload.parallelism.sequence_parallel) for i in range(model.layers)]
    if held is None:
        per_token = sum(layer_bytes)
    else:
        per_token = sum(count * layer_bytes[i] for i, count in zip(held.layers, held.in_flight))
    activations = per_token * layout.tokens_per_chip(workload) * (dtype / 2.0)
    total = (params + gathered) * dtype + gradients + optimizer + activations
    return MemoryReport(
        parameters_bytes=(params + gathered) * dtype, gradients_bytes=gradients, optimizer_bytes=optimizer,
        activations_bytes=activations, total_bytes=total, hbm_bytes=hbm_bytes, headroom_bytes=hbm_bytes - total,
        fits=total <= hbm_bytes,
        note=((f"pipeline stage with layers {format_id_ranges(held.layers)}, up to {max(held.in_flight)} micro-batch(es) "
               f"of activations per layer; " if held is not None and held.layers else "") +
              (f"chip with {expert_slots} expert slot(s) over "
               f"{len(model.moe_layers) if held is None else sum(model.is_moe(i) for i in held.layers)} MoE layers; "
               if model.moe is not None else "") +
              f"{workload.training.optimizer} state "
              f"{'sharded (ZeRO-1)' if workload.training.shard_optimizer else 'replicated'}; "
              + ("gradients sharded with it (ZeRO-2); " if workload.training.shard_gradients else "")
              + (f"dense weights sharded {layout.parameter_shards}-way (ZeRO-3), two layers gathered; "
                 if layout.parameter_shards > 1 else "") +
              f"recompute {workload.training.recompute}"),
    )
