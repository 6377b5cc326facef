"""The ops of one training step and what each costs.

A step is a sequence of ops on one of three resources — ``compute`` (the
chips' cores), ``network`` (their links inside the slice) and ``dcn`` (the
host NICs joining slices) — per micro-batch:

forward, per layer: attention (+ tensor-parallel all-reduce), then either the
dense FFN (+ all-reduce) or the MoE block: router, local permute, dispatch
all-to-all, expert FFN (every chip's time from its own load; the slowest chip
gates the combine — the straggler cost of skew), combine all-to-all, local
un-permute, shared experts. Then the LM head.

backward, per layer in reverse: 2 × the forward compute (data and weight
gradients), with rematerialisation first when configured, and the mirrored
all-to-alls (the combine's gradient travels like a dispatch, the dispatch's
like a combine). After the last micro-batch's backward of a layer, its
gradients are all-reduced over the replicas of its parameters — dense
parameters over the data-parallel ranks, expert parameters over the expert
groups — and the optimizer step closes the step. On a multi-slice cluster a
bucket's all-reduce is a chain of three ops: reduce-scatter inside the slice,
all-reduce of the shard across slices over the DCN, all-gather inside.

Durations come from the device model (compute) and the network model
(communication, routed on the real topology). Per-chip state is numpy arrays;
nothing here loops over chips.
"""

from __future__ import annotations

import math

import numpy as np

from pathsim.collectives import collective_phases, time_phases
from pathsim import kernel_costs as kc
from pathsim.device import DeviceModel
from pathsim.errors import PathsimConfigError
from pathsim.engine.graph import COMPUTE, DCN, NETWORK, Await, Item, Op, Prefetch, fuse, fuse_runs
from pathsim.memory import (OPTIMIZER_STATE_BYTES, Held, expert_slots_on_busiest_chip,
                            optimizer_params_per_chip)
from pathsim.model_math import LayerShapes, layer_params, layer_shapes
from pathsim.network.timing import NetworkModel
from pathsim.placement import Placement
from pathsim.network.linear import LinkBytes, dense_link_bytes
from pathsim.routing import DispatchMap, LayerRouting, RoutingPlan, expert_capacity
from pathsim.topology.base import Topology
from pathsim.topology.multi_slice import MultiSlice
from pathsim.traffic import Traffic
from pathsim.workload import Layout, WorkloadConfig

# Kernel families whose backward is half input gradients, half weight gradients (X·W: dX = dY·Wᵀ, dW = Xᵀ·dY).
WEIGHTED_FAMILIES = ("matmul", "ffn", "router")


MAX_BUCKETS = 10_000  # gradient buckets of one collective (each an op): a real step has tens to hundreds


class StepCoster:
    """Durations of every op, for one workload on one cluster."""

    def __init__(self, workload: WorkloadConfig, layout: Layout, topology: Topology, network: NetworkModel,
                 device: DeviceModel, placement: Placement | None, held: Held | None = None):
        self.workload, self.layout, self.topology = workload, layout, topology
        self.network, self.device, self.placement = network, device, placement
        self.held = held  # a pipeline stage's layers (None: the whole model)
        self.model = workload.model
        self.shapes: LayerShapes = layer_shapes(self.model)
        self.dtype = self.model.dtype_bytes
        tokens_mb = workload.training.tokens_per_step // workload.training.micro_batches
        self.tokens_per_chip = layout.tokens_per_chip(workload)
        self.tokens_per_data_rank = tokens_mb / layout.data
        self._collective_cache: dict[tuple, list[tuple[str, float, np.ndarray]]] = {}
        # Dense parameters are replicated over the data ranks (one group per tensor rank), or, sharded (ZeRO-3), over
        # the data ranks of each slice, replicated across the slices; every copy of an expert set (one per expert
        # group and tensor rank) trains on its own tokens, so expert gradients are all-reduced over the chips
        # holding the same position of every copy.
        self.dense_groups, self.tensor_groups = layout.groups("data"), layout.groups("tensor")
        self.shard_groups, self.cross_slice_groups = layout.groups("shard"), layout.groups("cross_slice")
        self.context_groups, self.expert_groups = layout.groups("context"), layout.groups("expert_copies")
        self.moe_index = {layer: j for j, layer in enumerate(self.model.moe_layers)}
        self._maps: dict[int, tuple[RoutingPlan, DispatchMap]] = {}
        self._bases: dict[int, tuple] = {}  # per dispatch map: its bases to and from the experts
        self._moe_fixed: dict[tuple[int, bool], tuple] = {}

    # ---- helpers ----------------------------------------------------------------------
    def _compute(self, name, family, cost: kc.KernelCost, layer, backward=False, category="compute", scale=None) -> Op:
        """An op on every chip from its per-chip cost (backward: data and weight gradients, twice the forward; of a
        layer with weights, half of it is the weight gradients, which zero-bubble schedules run apart). `scale`:
        the cost's multiple to run, where the cost is not the forward's (default 2 in backward, else 1)."""
        scale = (2.0 if backward else 1.0) if scale is None else scale
        duration = self.device.time_s(family, scale * cost.flops, scale * cost.nbytes)
        return Op(name, category, COMPUTE, float(duration), layer, flops=scale * cost.flops,
                  weight_share=0.5 if backward and family in WEIGHTED_FAMILIES else 0.0)

    def collective_segments(self, op: str, nbytes: float, groups: np.ndarray) -> list[tuple[str, float, np.ndarray]]:
        """A collective over concurrent groups as runs of phases on one tier each — (tier, time, link bytes):
        one run inside a slice, or slice / DCN / slice for a hierarchical all-reduce across slices. Cached."""
        key = (op, float(nbytes), groups.shape, groups.tobytes())
        if key not in self._collective_cache:
            segments: list[tuple[str, float, np.ndarray]] = []
            if nbytes > 0 and groups.shape[1] >= 2:
                _, phases = collective_phases(self.topology, op, nbytes, groups, network=self.network)
                for t in time_phases(self.topology, self.network, op, nbytes, groups, phases).phases:
                    if not segments or segments[-1][0] != t.phase.tier:
                        segments.append((t.phase.tier, 0.0, np.zeros(self.topology.num_links)))
                    tier, time_s, link_bytes = segments[-1]
                    segments[-1] = (tier, time_s + t.time_s, link_bytes + t.phase.repeat * t.timing.link_bytes)
            self._collective_cache[key] = segments
        return self._collective_cache[key]

    def collective(self, op: str, nbytes: float, groups: np.ndarray) -> tuple[float, np.ndarray]:
        """Time and link bytes of a collective over concurrent groups, all its phases together."""
        segments = self.collective_segments(op, nbytes, groups)
        return (sum(t for _, t, _ in segments),
                sum((b for _, _, b in segments), np.zeros(self.topology.num_links)))

    def _network_op(self, name: str, category: str, time_s: float, layer: int, link_bytes: "np.ndarray | LinkBytes") -> Op:
        """An op on the slice's network that also holds the DCN when any of its bytes cross slices, so it
        contends there with the gradient buckets crossing too."""
        crosses = isinstance(self.topology, MultiSlice) and dense_link_bytes(link_bytes)[self.topology.dcn_links].any()
        return Op(name, category, NETWORK, time_s, layer, link_bytes=link_bytes, also=(DCN,) if crosses else ())

    def _tensor_allreduce(self, name: str, layer: int) -> list[Op]:
        if self.layout.tensor == 1:
            return []
        nbytes = self._tokens(layer)[1] * self.model.d_model * self.dtype
        time_s, link_bytes = self.collective("all_reduce", nbytes, self.tensor_groups)
        return [self._network_op(name, "tensor_parallel", time_s, layer, link_bytes)]

    def _tokens(self, layer: int) -> tuple[float, float]:
        """Tokens `layer` (``model.layers``: the LM head) runs on per micro-batch: a chip's and its data rank's (an
        encoder-decoder model's decoder runs on the targets)."""
        share = self.model.token_share(layer)
        return self.tokens_per_chip * share, self.tokens_per_data_rank * share

    def _norms(self, name: str, layer: int, backward: bool) -> Op:
        """A block's layer norm, dropout and residual: on a tensor rank's share of the tokens with sequence
        parallelism, on its data rank's whole without."""
        chip, rank = self._tokens(layer)
        tokens = chip if self.workload.parallelism.sequence_parallel else rank
        return self._compute(name, "elementwise", kc.elementwise(tokens, self.model.d_model, 8, self.dtype), layer, backward)

    # ---- forward / backward ops of one layer -------------------------------------------
    def attention(self, layer: int, backward: bool) -> list[Item]:
        """The attention block's items (a decoder layer's cross-attention after its self-attention, before it in
        backward), its compute ops in a row fused (:func:`fuse_runs`)."""
        blocks = [self._attention(layer, backward)]
        if self.model.is_decoder_with_encoder(layer):
            blocks.insert(0 if backward else 1, self._cross_attention(layer, backward))
        return fuse_runs([item for block in blocks for item in block])

    def _attention(self, layer: int, backward: bool) -> list[Item]:
        s, (_, td) = self.shapes, self._tokens(layer)
        tag = "bwd" if backward else "fwd"
        d, tp = self.model.d_model, self.layout.tensor
        keys = self.model.self_attention_len(layer)
        # A tensor rank runs its data rank's tokens through its shard of the heads: the input is read whole,
        # q/k/v/attention outputs are its shard, and the output projection writes partial sums of width d.
        proj = self._compute(f"L{layer} attention proj {tag}", "matmul",
                             kc.dense(td, s.attention_params / tp, 2 * d + 4 * d / tp, self.dtype), layer, backward)
        core = self._compute(f"L{layer} attention core {tag}", "attention",
                             kc.attention_core(td, keys, self.model.heads / tp, s.head_dim, self.dtype), layer, backward)
        if not self.model.flash_attention:  # the s×s scores and probabilities go through HBM, a memory-bound pass each
            scores = self._compute(f"L{layer} attention softmax {tag}", "elementwise",
                                   kc.attention_scores(td, keys, self.model.heads / tp, self.dtype,
                                                       self.model.dropout, backward), layer, backward, scale=1.0)
            core = fuse([core, scores])
        norm = self._norms(f"L{layer} norms+residual {tag}", layer, backward)
        core_items = self._with_context_exchange(core, layer, backward)
        # Parallel layers: a dense FFN's all-reduce sums the attention's partial outputs with its own.
        shared = self.model.parallel_layers and not self.model.is_moe(layer)
        ops = [proj, *core_items, norm] + ([] if shared else self._tensor_allreduce(f"L{layer} attention all-reduce {tag}", layer))
        if backward and self.workload.training.recompute != "none":
            # Rematerialise before differentiating: everything (full: the forward's tensor-parallel all-reduce too,
            # as Megatron-LM's full recompute re-runs it) or the attention core with its K/V exchange (selective).
            forward = self._attention(layer, False)
            again = forward if self.workload.training.recompute == "full" else forward[1:1 + len(core_items)]
            ops = _renamed(again, "fwd", "recompute") + ops
        return ops

    def _cross_attention(self, layer: int, backward: bool) -> list[Item]:
        """A decoder layer's attention to the encoder's output: Q and the output projection on its target tokens,
        K and V projected from every input token, scores over the input length, then its norm, residual and
        tensor-parallel all-reduce; recomputed like self-attention."""
        s, model, tp = self.shapes, self.model, self.layout.tensor
        tag = "bwd" if backward else "fwd"
        d, inputs, (_, targets) = model.d_model, self.tokens_per_data_rank, self._tokens(layer)
        q, kv = s.query_params / d, s.key_value_params / d  # Q + O widths, K + V widths
        queries = self._compute(f"L{layer} cross-attention Q/O proj {tag}", "matmul",
                                kc.dense(targets, s.query_params / tp, 2 * d + q / tp, self.dtype), layer, backward)
        keys = self._compute(f"L{layer} cross-attention K/V proj {tag}", "matmul",
                             kc.dense(inputs, s.key_value_params / tp, d + kv / tp, self.dtype),
                             layer, backward)
        core = self._compute(f"L{layer} cross-attention core {tag}", "attention",
                             kc.attention_core(targets, model.seq_len, model.heads / tp, s.head_dim, self.dtype), layer, backward)
        if not model.flash_attention:
            core = fuse([core, self._compute(f"L{layer} cross-attention softmax {tag}", "elementwise",
                                             kc.attention_scores(targets, model.seq_len, model.heads / tp, self.dtype,
                                                                 model.dropout, backward), layer, backward, scale=1.0)])
        norm = self._norms(f"L{layer} cross-attention norm+residual {tag}", layer, backward)
        ops: list[Item] = [queries, keys, core, norm,
                           *self._tensor_allreduce(f"L{layer} cross-attention all-reduce {tag}", layer)]
        if backward and self.workload.training.recompute != "none":
            forward = self._cross_attention(layer, False)
            again = forward if self.workload.training.recompute == "full" else [forward[2]]  # selective: the core
            ops = _renamed(again, "fwd", "recompute") + ops
        return ops

    def _with_context_exchange(self, core: Op, layer: int, backward: bool) -> list[Item]:
        """The attention core with the K/V traffic of context parallelism around it.

        Each context rank holds 1/C of every sequence's tokens and needs every other rank's keys and values
        (causal masks balanced across ranks, as Megatron-LM's load-balanced split does): C−1 blocks of its
        K/V width (2 × its KV heads × head_dim) reach each rank, as an all-gather over the context group; in
        backward the K/V again and their gradients (reduce-scattered), twice the bytes. ``ring`` passes the blocks
        while the core computes (the op runs beside it; only what outlasts the core is exposed); ``all_gather``
        gathers first and reduce-scatters after, on the critical path."""
        c = self.layout.context
        if c == 1:
            return [core]
        kv_heads = max((self.model.kv_heads or self.model.heads) / self.layout.tensor, 1.0)
        local = self.tokens_per_data_rank * 2 * kv_heads * self.shapes.head_dim * self.dtype
        tag = "bwd" if backward else "fwd"
        op, nbytes = ("reduce_scatter", 2 * c * local) if backward else ("all_gather", c * local)
        if self.workload.parallelism.context_algorithm == "ring":
            time_s, link_bytes = self.collective("all_gather", nbytes, self.context_groups)
            ring = self._network_op(f"L{layer} context K/V ring {tag}", "context_parallel", time_s, layer, link_bytes)
            return [Prefetch(ring), core, Await(ring)]
        time_s, link_bytes = self.collective(op, nbytes, self.context_groups)
        exchange = self._network_op(f"L{layer} context K/V {op.replace('_', '-')} {tag}", "context_parallel", time_s, layer,
                                    link_bytes)
        return [core, exchange] if backward else [exchange, core]

    def dense_ffn(self, layer: int, backward: bool) -> list[Op]:
        """The dense FFN's ops, with full recompute its forward again first (fused with it)."""
        return fuse_runs(self._dense_ffn(layer, backward))

    def _dense_ffn(self, layer: int, backward: bool) -> list[Op]:
        tag = "bwd" if backward else "fwd"
        ffn = self._compute(f"L{layer} dense FFN {tag}", "ffn",
                            kc.ffn(self._tokens(layer)[1], self.model.d_model, self.model.dense_ffn / self.layout.tensor,
                                   self.model.ffn_matrices, self.dtype),
                            layer, backward)
        label = "attention+FFN" if self.model.parallel_layers else "FFN"
        ops = [ffn] + self._tensor_allreduce(f"L{layer} {label} all-reduce {tag}", layer)
        if backward and self.workload.training.recompute == "full":  # the FFN and its all-reduce, again
            ops = _renamed(self._dense_ffn(layer, False), "fwd", "recompute") + ops
        return ops

    def all_to_all(self, name: str, layer: int, traffic: Traffic) -> Op:
        timing = self.network.phase(traffic, all_to_all=True)
        return self._network_op(name, "all_to_all", timing.time_s, layer, timing.link_bytes)

    def dispatch_map(self, plan: RoutingPlan) -> DispatchMap:
        """Where this layout's dispatch goes under `plan` (built once; routings made with it price together)."""
        if id(plan) not in self._maps:
            self._maps[id(plan)] = (plan, plan.dispatch_map(self.layout))
        return self._maps[id(plan)][1]

    def moe_layer(self, layer: int, routings: list[LayerRouting]) -> list[tuple[list[Op], list[Op]]]:
        """The MoE block's forward and backward ops for each of one layer's routings (one per micro-batch), priced
        together. The two all-to-alls are timed once per routing and reused mirrored in backward (the combine's
        gradient travels like a dispatch, the dispatch's like a combine); ops that do not depend on the routing
        are built once per layer and shared."""
        a2a = self._all_to_alls(layer, routings)
        experts = self._expert_ops(layer, routings)
        fixed = {b: self._moe_fixed_ops(layer, b) for b in (False, True)}
        out = []
        for (dispatch, combine, dispatch_grad, combine_grad), ((fwd, fwd_around), (bwd, bwd_around)) in zip(a2a, experts):
            before, after = fixed[False]
            forward = [before, dispatch, *fwd_around[0], fwd, *fwd_around[1], combine, after]
            before, after = fixed[True]  # (each already in backward order)
            backward = [after, combine_grad, *bwd_around[1][::-1], bwd, *bwd_around[0][::-1], dispatch_grad, before]
            if self.workload.training.recompute == "full":
                # Rematerialising an MoE layer re-runs its forward, all-to-alls included.
                backward = [o.renamed("fwd", "recompute").renamed("all-to-all", "all-to-all (recompute)")
                            for o in forward] + backward
            out.append((forward, backward))
        return out

    def moe_ops(self, layer: int, routing: LayerRouting) -> tuple[list[Op], list[Op]]:
        """The MoE block's forward and backward ops for one routing."""
        return self.moe_layer(layer, [routing])[0]

    def _all_to_alls(self, layer: int, routings: list[LayerRouting]) -> list[tuple[Op, Op, Op, Op]]:
        """Per routing: its dispatch and combine, and their mirrors in backward (dispatch-grad, combine-grad).

        With a network model whose loads are linear, routings of one dispatch map are priced from its basis when
        the basis is no larger than the dispatches this coster prices a step (micro-batches × its MoE layers), so
        the choice is the run's, not the batch's."""
        per_token = self.model.d_model * self.dtype
        dispatch_map = routings[0].map
        if (hasattr(self.network, "basis") and all(r.map is dispatch_map for r in routings)
                and dispatch_map.basis_size <= self.workload.training.micro_batches * self._moe_layers_run):
            if id(dispatch_map) not in self._bases:
                src, dst, entry = dispatch_map.basis_flows()
                shape, k = (dispatch_map.classes, self.layout.expert), dispatch_map.basis_size
                self._bases[id(dispatch_map)] = (
                    dispatch_map,
                    self.network.basis(src, dst, entry, k, lambda w: dispatch_map.traffic(w.reshape(shape)), True),
                    self.network.basis(dst, src, entry, k, lambda w: dispatch_map.traffic(w.reshape(shape)).transposed(),
                                       True))
            _, to_experts, from_experts = self._bases[id(dispatch_map)]
            weights = np.stack([r.per_rank.ravel() for r in routings]) * per_token
            timings = [zip(*basis.price(weights)) for basis in (to_experts, from_experts)]
        else:
            phase = self.network.phase
            timings = [[(t.time_s, t.link_bytes) for t in (phase(r.dispatch_traffic(per_token), True) for r in routings)],
                       [(t.time_s, t.link_bytes) for t in (phase(r.combine_traffic(per_token), True) for r in routings)]]
        out = []
        for (to_s, to_bytes), (from_s, from_bytes) in zip(*timings):
            dispatch = self._network_op(f"L{layer} dispatch all-to-all", "all_to_all", to_s, layer, to_bytes)
            combine = self._network_op(f"L{layer} combine all-to-all", "all_to_all", from_s, layer, from_bytes)
            # The mirrors move the same bytes: their DCN holds are their twins'.
            out.append((dispatch, combine,
                        Op(f"L{layer} dispatch-grad all-to-all", "all_to_all", NETWORK, from_s, layer, link_bytes=from_bytes,
                           also=combine.also),
                        Op(f"L{layer} combine-grad all-to-all", "all_to_all", NETWORK, to_s, layer, link_bytes=to_bytes,
                           also=dispatch.also)))
        return out

    @property
    def _moe_layers_run(self) -> int:
        layers = self.model.moe_layers if self.held is None else [i for i in self.held.layers if self.model.is_moe(i)]
        return max(len(layers), 1)

    def _expert_ops(self, layer: int, routings: list[LayerRouting]) -> list[tuple[tuple[Op, tuple], tuple[Op, tuple]]]:
        """Per routing, forward and backward: the expert FFN (every chip's time from its own load, the slowest gating
        the combine) and, with expert-tensor parallelism, the exchanges around it."""
        moe, d = self.model.moe, self.model.d_model
        tokens = np.stack([r.chip_tokens for r in routings])  # (routings, chips)
        out: list[list] = [[] for _ in routings]
        for backward in (False, True):
            tag, scale = ("bwd", 2.0) if backward else ("fwd", 1.0)
            width, around = moe.expert_ffn, [([], [])] * len(routings)
            computed = tokens
            if self.layout.expert_shard > 1:
                exchanged = [self._expert_tensor_exchange(layer, row, tag) for row in tokens]
                computed, around = np.stack([e[0] for e in exchanged]), [e[1] for e in exchanged]
                width = moe.expert_ffn / self.layout.expert_shard
            cost = kc.ffn(computed, d, width, self.model.ffn_matrices, self.dtype, weight_sets=routings[0].chip_slots)
            per_chip = self.device.time_s("expert_ffn", scale * cost.flops, scale * cost.nbytes).reshape(len(routings), -1)
            slowest, mean = per_chip.max(axis=1), per_chip.mean(axis=1)
            flops = np.broadcast_to(scale * cost.flops, per_chip.shape).mean(axis=1)
            for m in range(len(routings)):
                op = Op(f"L{layer} expert FFN {tag}", "compute", COMPUTE, float(slowest[m]), layer,
                        straggler_s=float(slowest[m] - mean[m]), flops=float(flops[m]), weight_share=0.5 if backward else 0.0)
                out[m].append((op, around[m]))
        return [tuple(pair) for pair in out]

    def _moe_fixed_ops(self, layer: int, backward: bool) -> tuple[Op, Op]:
        """What runs before the dispatch (router, permute) and after the combine (un-permute, shared experts) of one
        layer, each fused and in its direction's order: the same for every routing (built once)."""
        key = (layer, backward)
        if key in self._moe_fixed:
            return self._moe_fixed[key]
        s, d, (t, rank_tokens) = self.shapes, self.model.d_model, self._tokens(layer)
        moe = self.model.moe
        tag = "bwd" if backward else "fwd"
        router = self._compute(f"L{layer} router {tag}", "router", kc.router(t, d, moe.experts, self.dtype), layer, backward)
        if moe.dispatch == "einsum":  # one group per chip: the mask is [tokens, experts, capacity], each way
            capacity = float(expert_capacity(moe.capacity_factor, t, moe.top_k, moe.experts))
            one_hot = kc.einsum_dispatch(t, moe.top_k, moe.experts, capacity, d, self.dtype)
            to_experts, from_experts = ("dispatch_einsum", one_hot), ("dispatch_einsum", one_hot)
        else:
            to_experts = ("permute", kc.gather_permute(t, moe.top_k, d, self.dtype))
            from_experts = ("unpermute", kc.gather_combine(t, moe.top_k, d, self.dtype))
        permute = self._compute(f"L{layer} permute {tag}", *to_experts, layer, backward)
        unpermute = self._compute(f"L{layer} un-permute {tag}", *from_experts, layer, backward)
        shared = []
        if s.shared_params:
            shared_ffn = (moe.shared_ffn or moe.expert_ffn) * moe.shared_experts / self.layout.tensor
            shared.append(self._compute(f"L{layer} shared experts {tag}", "ffn",
                                        kc.ffn(rank_tokens, d, shared_ffn, self.model.ffn_matrices, self.dtype),
                                        layer, backward))
        before, after = [router, permute], [unpermute, *shared]
        self._moe_fixed[key] = (fuse(before[::-1]), fuse(after[::-1])) if backward else (fuse(before), fuse(after))
        return self._moe_fixed[key]

    def _expert_tensor_exchange(self, layer: int, chip_tokens: np.ndarray, tag: str) -> tuple[np.ndarray, tuple[list[Op], list[Op]]]:
        """Expert-tensor parallelism: every chip of a data rank holds 1/tensor of its experts, so the tokens its
        tensor ranks received are all-gathered among them before the experts, and the partial outputs
        reduce-scattered back after (the busiest tensor group's bytes). Returns each chip's tokens, now its whole
        data rank's, and the two collectives."""
        layout, d = self.layout, self.model.d_model
        chips = layout.chip(np.arange(layout.chips))
        slot = np.searchsorted(np.sort(chips), chips)  # each rank's entry in chip_tokens, which are in chip-id order
        per_rank = chip_tokens[slot].reshape(layout.data, layout.tensor).sum(axis=1)  # a data rank's tokens
        tokens = np.empty(layout.chips)
        tokens[slot] = np.repeat(per_rank, layout.tensor)  # which every tensor rank of it now runs
        nbytes = float(per_rank.max()) * d * self.dtype
        gather_s, gather_bytes = self.collective("all_gather", nbytes, self.tensor_groups)
        scatter_s, scatter_bytes = self.collective("reduce_scatter", nbytes, self.tensor_groups)
        gather = self._network_op(f"L{layer} expert-tensor all-gather {tag}", "tensor_parallel", gather_s, layer, gather_bytes)
        scatter = self._network_op(f"L{layer} expert-tensor reduce-scatter {tag}", "tensor_parallel", scatter_s, layer,
                                   scatter_bytes)
        return tokens, ([gather], [scatter])

    def head(self, backward: bool) -> Op:
        return self._compute(f"LM head {'bwd' if backward else 'fwd'}", "matmul",
                             kc.matmul(self._tokens(self.model.layers)[1], self.model.d_model,
                                       self.model.vocab / self.layout.tensor, self.dtype),
                             self.model.layers, backward)

    # ---- gradient sync and optimizer ---------------------------------------------------
    def layer_dense_params(self, layer: int) -> float:
        """A tensor rank's share of one layer's dense parameters (``model.layers``: embeddings and head)."""
        return layer_params(self.model, layer, self.shapes) / self.layout.tensor

    def weight_gather(self, layer: int, backward: bool) -> Op | None:
        """ZeRO-3 / FSDP: all-gather of one layer's dense weights over the data ranks of a slice (None unsharded)."""
        if self.layout.parameter_shards == 1:
            return None
        time_s, link_bytes = self.collective("all_gather", self.layer_dense_params(layer) * self.dtype, self.shard_groups)
        name = "LM head" if layer == self.model.layers else f"L{layer}"
        return self._network_op(f"{name} weight all-gather {'bwd' if backward else 'fwd'}", "weight_gather", time_s, layer,
                                link_bytes)

    def grad_sync(self, layer: int) -> list[list[Op]]:
        """All-reduce of one layer's gradients over the replicas of its parameters, in buckets.

        Buckets (``training.grad_bucket_bytes``) are separate chains of network
        ops, so an all-to-all on the critical path waits for at most one bucket.
        Sharded dense weights (ZeRO-3) reduce-scatter their gradients inside the
        slice and all-reduce each shard across the slices.
        """
        nbytes = self.layer_dense_params(layer) * self.dtype
        if self.layout.parameter_shards > 1:
            stages = [("reduce_scatter", nbytes, self.shard_groups),
                      ("all_reduce", nbytes / self.layout.parameter_shards, self.cross_slice_groups)]
            ops = self._bucketed(f"L{layer} grad sync (dense, sharded)", layer, stages)
        else:
            ops = self._bucketed(f"L{layer} grad all-reduce (dense)", layer, [("all_reduce", nbytes, self.dense_groups)])
        if layer in self.moe_index:
            ops += self._expert_grad_sync(layer)
        return ops

    def _expert_grad_sync(self, layer: int) -> list[list[Op]]:
        """Expert gradients summed over every copy: hierarchically, first over the expert groups and
        tensor ranks holding the same rank position (reduce-scatter + all-gather of the busiest rank's
        experts), and for experts replicated inside a group, in between, an all-reduce of the
        1/(groups × tensor) shard among the replicas' positions."""
        layout = self.layout
        expert_bytes = self.shapes.expert_params * self.dtype / layout.expert_shard  # what a chip holds of an expert
        shares = self.placement.token_shares(self.moe_index[layer])  # experts × positions; row e: e's copies
        ops = []
        if layout.expert_weight_copies > 1:
            nbytes = int(np.bincount(shares.indices, minlength=layout.expert).max()) * expert_bytes
            ops += self._bucketed(f"L{layer} grad all-reduce (experts)", layer, [("all_reduce", nbytes, self.expert_groups)])
        copies_of = np.diff(shares.indptr)
        shard = expert_bytes / layout.expert_weight_copies
        copies = np.arange(layout.expert_replication)
        for count in np.unique(copies_of[copies_of > 1]).tolist():
            replicated = np.flatnonzero(copies_of == count)
            pos = shares.indices[shares.indptr[replicated][:, None] + np.arange(count)]  # (experts, count)
            ranks = layout.rank_at(copies[None, :, None], pos[:, None, :])
            rings = layout.chip(ranks.reshape(-1, count))
            ops += self._bucketed(f"L{layer} grad all-reduce (replicated experts x{count})", layer, [("all_reduce", shard, rings)])
        return ops

    def _bucketed(self, name: str, layer: int, stages: list[tuple[str, float, np.ndarray]]) -> list[list[Op]]:
        """One chain of ops per bucket: its collectives (op, bytes, groups) in order, each split into its runs
        of phases on the slice's network or the DCN (an all-reduce across slices: slice / DCN / slice)."""
        buckets = max(1, math.ceil(stages[0][1] / self.workload.training.grad_bucket_bytes))
        if buckets > MAX_BUCKETS:  # each bucket is an op of the step's graph: checked before any is made
            raise PathsimConfigError(f"<workload {self.workload.name}>", "training.grad_bucket_bytes",
                                     f"splits {name}'s {stages[0][1]:.4g} bytes into {buckets:,} buckets, more than the "
                                     f"{MAX_BUCKETS:,} one collective may have", "raise training.grad_bucket_bytes, or check "
                                     "the model's sizes (model.vocab, model.d_model, model.layers)")
        segments = [seg for op, nbytes, groups in stages for seg in self.collective_segments(op, nbytes / buckets, groups)
                    if seg[1] > 0]
        if not segments:
            return []
        crossing = next((i for i, seg in enumerate(segments) if seg[0] == "dcn"), None)
        parts = ["" if crossing is None or len(segments) == 1 else " across slices (DCN)" if i == crossing
                 else " reduce-scatter in slice" if i < crossing else " all-gather in slice" for i in range(len(segments))]
        chains = []
        for b in range(buckets):
            label = name if buckets == 1 else f"{name} bucket {b + 1}/{buckets}"
            chains.append([Op(label + part, "grad_sync", DCN if tier == "dcn" else NETWORK, time_s, layer, link_bytes=link_bytes)
                           for part, (tier, time_s, link_bytes) in zip(parts, segments)])
        return chains

    def optimizer(self) -> Op:
        params = optimizer_params_per_chip(self.workload, self.layout,
                                           expert_slots_on_busiest_chip(self.workload, self.placement, self.held), self.held)
        cost = kc.optimizer(params, OPTIMIZER_STATE_BYTES[self.workload.training.optimizer], self.dtype)
        return Op("optimizer step", "optimizer", COMPUTE, float(self.device.time_s("optimizer", cost.flops, cost.nbytes)), -1,
                  flops=cost.flops)


def _renamed(items: list[Item], old: str, new: str) -> list[Item]:
    """Copies of `items` with `old` replaced by `new` in their ops' names, a prefetch and its wait kept paired."""
    copies: dict[int, Op] = {}

    def copy(op: Op) -> Op:
        if id(op) not in copies:
            copies[id(op)] = op.renamed(old, new)
        return copies[id(op)]

    return [Prefetch(copy(i.op)) if isinstance(i, Prefetch) else Await(copy(i.op)) if isinstance(i, Await) else copy(i)
            for i in items]
