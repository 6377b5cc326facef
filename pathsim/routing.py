"""Token routing: from tasks' skew to per-chip expert load and all-to-all bytes.

Two stages, both seeded and vectorised (no loop over chips or tokens):

1. :func:`build_plan` (once per run): how many tokens of each task every chip
   contributes per micro-batch, and each task's routing distribution over the
   experts of every MoE layer — uniform, Zipf over a random ranking of the
   experts, a Dirichlet draw, or a measured histogram — with the task's
   affinity mass moved onto its expert subset. Top-k routing picks k distinct
   experts per token, so no expert can take more than 1/k of the assignments;
   distributions are water-filled to that cap.

2. :func:`route_layer` (per step, micro-batch and MoE layer): samples how many
   token-assignments each source chip sends to each expert, applies expert
   capacity (GShard/Switch: per source group, ``ceil(capacity_factor × tokens ×
   top_k / experts)``; over-capacity tokens are dropped) unless dropless, and
   maps the kept tokens through the placement onto chips: the per-chip expert
   load and the dispatch traffic matrix in bytes. The combine is its transpose.
   With GShard's einsum dispatch the buffers are padded: every source sends, and
   every expert computes, its full capacity whatever the routing (drops still
   follow the routing).

Sampling has two fidelities:
- ``exact``: a multinomial draw per (source chip, task) over the experts; drops
  come from the sampled per-chip counts. Cost O(chips × tasks × experts).
- ``mean_field``: one binomial count per task and expert (the batch-level noise
  that makes some experts hot this step; where every count's variance is at least
  100, its skew-matched normal approximation), each chip sending its tokens in
  those realised proportions; drops are the expected overflow of the per-chip
  binomial counts over capacity (normal approximation). Cost O(tasks × experts)
  plus the traffic matrix. It keeps every total exact (tokens routed = kept +
  dropped) and loses only per-chip sampling noise, which averages out over the
  hundreds of sources each link and each expert sees.
``auto`` picks ``exact`` while chips × tasks × experts ≤ 2**17 per layer and ≤ 2**24 over a
step's micro-batches and MoE layers (the exact draw costs ~80 ns per entry; beyond that it
would dominate the run: DeepSeek-V3's 120 micro-batches × 58 layers on 128-GPU stages would
draw 2.3·10⁸ a step).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy.special import bdtrc

from pathsim.choices import SAMPLING_MODES
from pathsim.errors import PathsimConfigError
from pathsim.limits import check_allocation
from pathsim.placement import Placement
from pathsim.traffic import Traffic
from pathsim.workload import Layout, WorkloadConfig, load_histogram

EXACT_LIMIT = 2**17  # entries of one layer's exact draw
EXACT_STEP_LIMIT = 2**24  # entries of a step's exact draws
NORMAL_VARIANCE = 100.0  # mean-field counts with at least this variance are drawn from their normal approximation


@dataclass(frozen=True)
class RoutingPlan:
    task_tokens: np.ndarray  # (chips, tasks) tokens per micro-batch entering each MoE layer on each chip
    probabilities: np.ndarray  # (tasks, moe layers, experts); rows sum to 1, entries <= 1/top_k
    top_k: int
    capacity_factor: float | None  # None: dropless
    sampling: str  # exact | mean_field
    padded: bool = False  # einsum dispatch: every source sends and every expert computes whole capacity buffers
    # Encoder-decoder models: the (chips, tasks) target tokens entering the decoder's MoE layers, which start at MoE
    # layer `decoder_from`; the decoder's plan (:meth:`at`) is this one with those tokens.
    decoder_tokens: np.ndarray | None = None
    decoder_from: int = 0
    encoder_plan: "RoutingPlan | None" = None  # set on a decoder's plan: the plan it was made from

    def at(self, layer: int) -> "RoutingPlan":
        """The plan of MoE layer `layer`: the decoder's where it runs on target tokens, else this one."""
        return self.decoder if self.decoder_tokens is not None and layer >= self.decoder_from else self

    @cached_property
    def decoder(self) -> "RoutingPlan":
        return replace(self, task_tokens=self.decoder_tokens, decoder_tokens=None, encoder_plan=self)

    @cached_property
    def _classes_of_both(self) -> tuple[np.ndarray, np.ndarray]:
        both = self.task_tokens if self.decoder_tokens is None else np.hstack([self.task_tokens, self.decoder_tokens])
        classes, row_of = np.unique(both, axis=0, return_inverse=True)
        return classes, row_of.ravel()

    @cached_property
    def source_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct rows of ``task_tokens`` (classes × tasks) and each chip's class: chips of one class send
        alike under the mean field. An encoder-decoder model's chips are classed by their encoder and decoder
        tokens together, so every MoE layer has the same classes (a class's rows may repeat in one of them)."""
        tasks = self.task_tokens.shape[1]
        if self.encoder_plan is not None:
            classes, row_of = self.encoder_plan._classes_of_both
            return classes[:, tasks:], row_of
        classes, row_of = self._classes_of_both
        return classes[:, :tasks], row_of

    @cached_property
    def pick_shares(self) -> np.ndarray:
        """(moe layers, tasks, experts) share of a task's tokens that pick each expert (top-k picks distinct ones)."""
        return np.minimum(self.top_k * self.probabilities.transpose(1, 0, 2), 1.0)

    @cached_property
    def task_totals(self) -> np.ndarray:
        """(tasks,) tokens of each task per micro-batch."""
        return self.task_tokens.sum(axis=0)

    @cached_property
    def normal_draws(self) -> bool:
        """Whether the mean field draws its routed counts from the binomial's skew-corrected normal approximation:
        where every count's variance n·q·(1 − q) is at least NORMAL_VARIANCE (or the count is certain)."""
        n, q = self.task_totals[None, :, None], self.pick_shares
        variance = n * q * (1.0 - q)
        return bool(np.all((variance >= NORMAL_VARIANCE) | (q == 0.0) | (q == 1.0)))

    @cached_property
    def _normal_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per (layer, task, expert): the binomial's mean, standard deviation and skew / 6, and the count's bound."""
        n = np.broadcast_to(self.task_totals[None, :, None].astype(np.float64), self.pick_shares.shape)
        q = self.pick_shares
        mean = n * q
        sd = np.sqrt(mean * (1.0 - q))
        return mean, sd, np.divide(1.0 - 2.0 * q, 6.0 * sd, out=np.zeros_like(sd), where=sd > 0), n

    def draw_routed(self, rng: np.random.Generator, layer: "int | slice | None" = None) -> np.ndarray:
        """Routed assignments of each task to each expert of MoE layer `layer` (tasks × experts; None: every layer,
        layers × tasks × experts): Binomial(task tokens, pick share), drawn element after element, so all layers at
        once draw what layer after layer would. With :attr:`normal_draws`, the Cornish–Fisher approximation
        matched to the binomial's mean, variance and skew, rounded: numpy's binomial sets its sampler up anew for
        every (n, q), and this costs a third of it; at NORMAL_VARIANCE its quantiles are within one count of the
        binomial's and its first three moments within 0.1 %."""
        at = slice(None) if layer is None else layer
        if not self.normal_draws:
            return rng.binomial(self.task_totals[:, None], self.pick_shares[at]).astype(np.float64)
        mean, sd, skew, n = (term[at] for term in self._normal_terms)
        z = rng.standard_normal(mean.shape)
        counts = z * z  # mean + sd·(z + skew·(z² − 1)), in place: a step draws millions
        counts -= 1.0
        counts *= skew
        counts += z
        counts *= sd
        counts += mean
        np.rint(counts, out=counts)
        return np.clip(counts, 0.0, n, out=counts)

    @cached_property
    def _chip_rows(self) -> np.ndarray:
        return np.arange(len(self.task_tokens))

    def rows(self, sampled: bool = True) -> tuple[np.ndarray, int]:
        """Each rank's row of kept assignments and the number of rows: one per chip for an exact draw, one per
        class of chips under the mean field or for an expectation (``sampled=False``). The same arrays each call."""
        if self.sampling == "exact" and sampled:
            return self._chip_rows, len(self._chip_rows)
        classes, row_of = self.source_classes
        return row_of, len(classes)

    def dispatch_map(self, layout: Layout, sampled: bool = True) -> DispatchMap:
        """The dispatch map of `layout` for this plan's rows (build once per layout and reuse)."""
        return DispatchMap(layout, *self.rows(sampled))


@dataclass(frozen=True)
class LoadSample:
    """What results keep of one routed layer (the traffic itself is dropped once timed)."""

    routed: np.ndarray  # (tasks, experts)
    dropped: np.ndarray  # (tasks,)
    chip_max_over_mean: float


class DispatchMap:
    """Where one layout's dispatch goes, given each source's row of kept assignments (its class).

    Every source of class c in copy g of the expert set sends ``per_rank[c, p]``
    assignments to the rank at position p of copy g, so the dispatch is linear in
    ``per_rank`` (classes × positions): :meth:`basis_flows` are the flows of one
    unit of each entry, which a linear network model prices once for every micro-batch.
    Built once per layout and plan (the rank arithmetic is the layout's)."""

    def __init__(self, layout: Layout, row_of: np.ndarray, classes: int):
        self.layout, self.row_of, self.classes = layout, row_of, classes
        ranks = np.arange(layout.chips)
        self.chip = layout.chip(ranks)
        self.in_id_order = np.argsort(self.chip, kind="stable")
        self.position = layout.expert_position(ranks)
        self.group = layout.expert_copy(ranks)  # which copy of the expert set the rank dispatches to
        count = np.zeros((layout.expert_replication, classes))  # sources of each class in each copy
        np.add.at(count, (self.group, row_of), 1.0)
        self._received = count[self.group]  # ranks × classes: the sources sending to each rank

    @cached_property
    def _copy_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(copies × positions) the chip of each rank of each copy of the expert set, and its source class."""
        layout = self.layout
        ranks = layout.rank_at(np.arange(layout.expert_replication)[:, None], np.arange(layout.expert)[None, :])
        return layout.chip(ranks), self.row_of[ranks]

    @cached_property
    def destinations(self) -> np.ndarray:
        """(ranks × positions) the chip at every position of each rank's own copy of the expert set."""
        layout = self.layout
        return layout.chip(layout.rank_at(self.group[:, None], np.arange(layout.expert)[None, :]))

    def chip_tokens(self, per_rank: np.ndarray) -> np.ndarray:
        """Assignments each chip's experts compute, chips in id order; `per_rank` (…, classes, positions)."""
        received = np.einsum("rc,...cr->...r", self._received, per_rank[..., self.position])
        return received[..., self.in_id_order]

    def traffic(self, per_rank: np.ndarray) -> Traffic:
        """The dispatch of `per_rank` in token-assignments, in whichever form is cheapest to hold and route."""
        layout, classes = self.layout, self.classes
        chips, physical = layout.chips, layout.physical_chips
        chip, row_of = self.chip, self.row_of
        rank = layout.expert_replication * classes
        if rank * 4 <= chips:
            # Every source of one class in one copy sends the same row: copies of one pattern, whose low-rank
            # factors (left[s, (copy, class)] = 1, right[(copy, class), c] = per_rank[class, position of c])
            # are built only for a router that needs them.
            chip_of, class_of = self._copy_grid
            return Traffic.from_copies(physical, chip_of, class_of, per_rank)
        dest = self.destinations
        if chips * layout.expert * 16 <= physical * physical:
            # Far fewer flows than the cluster's N×N entries (a pipeline stage's or a job's part of the cluster):
            # keep the flows, never the matrix.
            src = np.broadcast_to(chip[:, None], dest.shape).ravel()
            return Traffic.from_flows(physical, src, dest.ravel(), per_rank[row_of].ravel())
        matrix = np.zeros((physical, physical))
        matrix[chip[:, None], dest] = per_rank[row_of]
        return Traffic.from_matrix(matrix)

    @property
    def basis_size(self) -> int:
        return self.classes * self.layout.expert

    def basis_flows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The unit flows of the dispatch's basis — (source chip, destination chip, entry of ``per_rank``, in its
        flattened order): every source of class c sends to the position-p rank of its own copy of the expert set —
        so the dispatch of any ``per_rank`` is these flows weighted by their entries."""
        positions, dest = self.layout.expert, self.destinations
        src = np.broadcast_to(self.chip[:, None], dest.shape).ravel()
        entry = (self.row_of[:, None] * positions + np.arange(positions)[None, :]).ravel()
        return src, dest.ravel(), entry


@dataclass(frozen=True)
class LayerRouting:
    routed: np.ndarray  # (tasks, experts) token-assignments routed to each expert
    dropped: np.ndarray  # (tasks,) token-assignments dropped at capacity
    per_rank: np.ndarray  # (classes, positions) kept assignments each source of a class sends to each position
    chip_slots: np.ndarray  # (chips,) experts each chip hosts in this layer (their weights stream per pass), id order
    map: DispatchMap
    chip_tokens: np.ndarray  # (chips,) token-assignments each chip's experts compute, chips in id order

    @cached_property
    def dispatch(self) -> Traffic:
        """Token-assignments sent s -> c (diagonal: stay local); low-rank factors when cheaper."""
        return self.map.traffic(self.per_rank)

    @property
    def dispatch_tokens(self) -> np.ndarray:
        """The dispatch as a dense (chips × chips) matrix of token-assignments."""
        return self.dispatch.matrix

    def load_sample(self) -> LoadSample:
        return load_samples([self])[0]

    def dispatch_traffic(self, bytes_per_token: float) -> Traffic:
        return self.dispatch.scaled(bytes_per_token)

    def combine_traffic(self, bytes_per_token: float) -> Traffic:
        return self.dispatch.transposed().scaled(bytes_per_token)


# ---- stage 1: the plan ---------------------------------------------------------------


def _largest_remainder(total: int, shares: np.ndarray) -> np.ndarray:
    """Integers proportional to `shares` summing exactly to `total` (ties to the earlier entry)."""
    raw = total * shares / shares.sum()
    base = np.floor(raw).astype(np.int64)
    short = total - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")
    base[order[:short]] += 1
    return base


def split_tokens(workload: WorkloadConfig, layout: Layout, source: str = "<workload>", tokens: int | None = None) -> np.ndarray:
    """(chips, tasks) tokens per micro-batch entering each MoE layer on each chip (`tokens`: the micro-batch's,
    by default its input tokens).

    A data-parallel rank's tokens are split over its tensor-parallel chips
    (sequence parallelism), so every chip dispatches its own share.
    """
    if tokens is None:
        tokens = workload.training.tokens_per_step // workload.training.micro_batches
    shares = np.array([t.share for t in workload.tasks])
    n_tasks = len(shares)
    per_chip = _largest_remainder(tokens, np.ones(layout.chips))
    if workload.task_layout == "mixed":
        raw = per_chip[:, None] * shares[None, :]
        out = np.floor(raw).astype(np.int64)
        short = per_chip - out.sum(axis=1)
        rank = np.argsort(np.argsort(-(raw - out), axis=1, kind="stable"), axis=1, kind="stable")
        return out + (rank < short[:, None])
    # partitioned: whole data-parallel ranks per task, in task order
    if layout.data < n_tasks:
        raise PathsimConfigError(source, "task_layout", f"partitioned layout needs a data-parallel rank per task: {n_tasks} tasks, {layout.data} ranks",
                                 "use task_layout: mixed, or a larger cluster")
    ranks_per_task = np.maximum(_largest_remainder(layout.data, shares), 1)
    while ranks_per_task.sum() > layout.data:  # the max(…,1) may overshoot: take back from the largest
        ranks_per_task[np.argmax(ranks_per_task)] -= 1
    task_of_rank = np.repeat(np.arange(n_tasks), ranks_per_task)
    task_of_chip = np.repeat(task_of_rank, layout.tensor)
    out = np.zeros((layout.chips, n_tasks), dtype=np.int64)
    task_totals = _largest_remainder(tokens, shares)
    for t in range(n_tasks):
        chips = np.flatnonzero(task_of_chip == t)
        out[chips, t] = _largest_remainder(int(task_totals[t]), np.ones(len(chips)))
    return out


def cap_probabilities(p: np.ndarray, cap: float) -> np.ndarray:
    """Water-fill rows of `p` so no entry exceeds `cap` (mass moves to the others, proportionally)."""
    p = p / p.sum(axis=-1, keepdims=True)
    capped = np.zeros(p.shape, dtype=bool)
    for _ in range(p.shape[-1]):
        over = (p > cap * (1 + 1e-12)) & ~capped
        if not over.any():
            break
        capped |= over
        free = np.where(capped, 0.0, p)
        room = 1.0 - cap * capped.sum(axis=-1, keepdims=True)
        free_mass = free.sum(axis=-1, keepdims=True)
        # Fewer experts carry mass than top_k needs: the k-th choices spread evenly over the rest.
        uncapped = (~capped).sum(axis=-1, keepdims=True)
        spread = np.where(capped, 0.0, 1.0) / np.maximum(uncapped, 1)
        p = np.where(capped, cap, np.where(free_mass > 0, free / np.maximum(free_mass, 1e-300), spread) * room)
    return p


def task_distributions(workload: WorkloadConfig, seed: int, source: str = "<workload>") -> np.ndarray:
    """(tasks, moe layers, experts) routing probabilities, water-filled to the top-k cap.

    Each task draws from its own random stream and is capped over the experts
    it can reach only, so adding a task (or experts only a new task reaches)
    leaves the routing of the others exactly as it was, bit for bit.
    """
    moe = workload.model.moe
    n_layers, n_experts = len(workload.model.moe_layers), moe.experts
    out = np.zeros((len(workload.tasks), n_layers, n_experts))
    for t, task in enumerate(workload.tasks):
        rng = np.random.default_rng([seed, 0, t])
        reach = task.reachable_ids(n_experts)
        n_reach = len(reach)
        routing = task.routing
        if routing.kind == "uniform":
            p = np.ones((n_layers, n_reach))
        elif routing.kind == "zipf":
            weights = 1.0 / np.arange(1, n_reach + 1) ** routing.exponent
            rank = rng.permuted(np.tile(np.arange(n_reach), (n_layers, 1)), axis=1)
            p = weights[rank]
        elif routing.kind == "dirichlet":
            p = rng.dirichlet(np.full(n_reach, routing.concentration), size=n_layers)
            p = np.maximum(p, 1e-300)  # tiny concentrations underflow to exact zeros
        else:
            p = load_histogram(workload, t, source)
        p = p / p.sum(axis=1, keepdims=True)
        if task.affinity is not None:
            chosen = np.isin(reach, task.affinity.expert_ids())
            if not chosen.all():
                w = task.affinity.weight
                p = w * _restricted(p, chosen) + (1 - w) * _restricted(p, ~chosen)
        out[t][:, reach] = cap_probabilities(p, 1.0 / moe.top_k)
    return out


def _restricted(p: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Rows of p restricted to `members` and renormalised (uniform over them where p has no mass there)."""
    inside = np.where(members, p, 0.0)
    mass = inside.sum(axis=1, keepdims=True)
    uniform = np.where(members, 1.0 / max(int(members.sum()), 1), 0.0)
    return np.where(mass > 0, inside / np.maximum(mass, 1e-300), uniform)


def build_plan(workload: WorkloadConfig, layout: Layout, seed: int, sampling: str = "auto",
               source: str = "<workload>") -> RoutingPlan:
    moe = workload.model.moe
    if moe is None:
        raise ValueError("build_plan needs an MoE model")
    if sampling not in SAMPLING_MODES:
        raise PathsimConfigError("<arguments>", "sampling", f"unknown sampling mode {sampling!r}", f"use one of {', '.join(SAMPLING_MODES)}")
    # The routing state is (tasks, layers, experts) probabilities with their capped copies and temporaries (about
    # four such arrays), and a step's expert loads per chip (chips, layers, experts): checked before any is made.
    n_layers = len(workload.model.moe_layers)
    check_allocation(8.0 * n_layers * moe.experts * (4 * len(workload.tasks) + layout.chips),
                     f"routing {moe.experts:,} experts x {n_layers} MoE layers x {len(workload.tasks)} task(s) on {layout.chips:,} chips",
                     source, "model.moe.experts", "use fewer experts (or raise $PATHSIM_MEMORY_BUDGET on a larger machine)")
    task_tokens = split_tokens(workload, layout, source)
    # streams [seed, 0, task]: static distributions; steps use [seed, 1, step]
    probabilities = task_distributions(workload, seed, source)
    if sampling == "auto":
        active_tasks = int((task_tokens > 0).sum(axis=1).max())
        per_layer = layout.chips * active_tasks * moe.experts
        per_step = per_layer * workload.training.micro_batches * len(workload.model.moe_layers)
        sampling = "exact" if per_layer <= EXACT_LIMIT and per_step <= EXACT_STEP_LIMIT else "mean_field"
    model, decoder_tokens = workload.model, None
    decoder_from = sum(1 for i in model.moe_layers if not model.is_decoder_with_encoder(i))
    if decoder_from < len(model.moe_layers):  # MoE layers in an encoder-decoder model's decoder
        inputs = workload.training.tokens_per_step // workload.training.micro_batches
        decoder_tokens = split_tokens(workload, layout, source, workload.decoder_tokens(inputs))
    return RoutingPlan(task_tokens=task_tokens, probabilities=probabilities, top_k=moe.top_k,
                       capacity_factor=None if moe.dropless else moe.capacity_factor, sampling=sampling,
                       padded=moe.dispatch == "einsum", decoder_tokens=decoder_tokens, decoder_from=decoder_from)


def step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, step])


# ---- stage 2: one layer ----------------------------------------------------------------


def expert_capacity(capacity_factor: float, tokens, top_k: int, experts: int):
    """Slots per expert for a group of `tokens` (GShard/Switch): ceil(capacity_factor × tokens × top_k / experts)."""
    return np.ceil(capacity_factor * tokens * top_k / experts)


def _capacity(plan: RoutingPlan, chip_tokens: np.ndarray, experts: int) -> np.ndarray:
    return expert_capacity(plan.capacity_factor, chip_tokens, plan.top_k, experts)


def _expected_overflow(tokens: np.ndarray, mean: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """E[(X − C)+] for X ~ Binomial(tokens, mean / tokens): a chip's tokens each pick the expert or not.

    E[X·1{X>C}] = mean · P(Y ≥ C) with Y ~ Binomial(tokens − 1, q), so
    E[(X − C)+] = mean · P(Y > C − 1) − C · P(X > C). Exact for one task per
    chip; for a task mix it matches the mean (the variance is slightly high).
    """
    tokens = np.broadcast_to(np.asarray(tokens, dtype=np.int64), mean.shape)
    q = np.clip(np.divide(mean, tokens, out=np.zeros_like(mean), where=tokens > 0), 0.0, 1.0)
    capacity = np.broadcast_to(np.asarray(capacity, dtype=np.int64), mean.shape)
    single = tokens <= 1  # one token: it overflows only when capacity is 0, which ceil() never gives
    above = mean * bdtrc(capacity - 1, np.maximum(tokens - 1, 1), q) - capacity * bdtrc(capacity, np.maximum(tokens, 1), q)
    return np.where(single, 0.0, np.clip(above, 0.0, mean))


def _sources(plan: RoutingPlan, layer: int, rng: np.random.Generator | None):
    """Kept assignments per source row, the row of each chip, routed (tasks × experts), dropped per task.

    ``rng=None`` gives the expectation (no batch noise): what planners balance.
    """
    plan = plan.at(layer)
    n = plan.task_tokens
    q = plan.pick_shares[layer]
    if plan.sampling == "exact" and rng is not None:
        counts = rng.binomial(n[:, :, None], q[None, :, :])  # (chips, tasks, experts)
        demand = counts.sum(axis=1).astype(np.float64)
        routed = counts.sum(axis=0).astype(np.float64)
        if plan.capacity_factor is None:
            return demand, plan.rows()[0], routed, np.zeros(len(q))
        kept = np.minimum(demand, _capacity(plan, n.sum(axis=1), q.shape[1])[:, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            drop_share = np.where(demand > 0, (demand - kept) / demand, 0.0)
        dropped = np.einsum("cte,ce->t", counts, drop_share)
        return kept, plan.rows()[0], routed, dropped
    totals = plan.task_totals
    routed = totals[:, None] * q if rng is None else plan.draw_routed(rng, layer)  # (tasks, experts)
    kept, dropped = _mean_field(plan, routed[None])
    return kept[0], plan.source_classes[1], routed, dropped[0]


def load_samples(routings: "list[LayerRouting]") -> list[LoadSample]:
    """What results keep of each routing, their chips' loads reduced together (a step keeps thousands)."""
    tokens = np.stack([r.chip_tokens for r in routings])  # (routings, chips)
    means, peaks = tokens.mean(axis=1), tokens.max(axis=1)  # (row by row: the same floats as one at a time)
    return [LoadSample(r.routed, r.dropped, float(peak) / float(mean) if mean > 0 else 1.0)
            for r, mean, peak in zip(routings, means, peaks)]


def draw_micro_batch(plan: RoutingPlan, rng: np.random.Generator) -> np.ndarray | None:
    """Mean field: one micro-batch's routed assignments of every MoE layer (layers × tasks × experts), the same
    draws as :func:`route_layer` would make layer after layer. Exact sampling draws per layer (None)."""
    if plan.sampling == "exact":
        return None
    if plan.decoder_tokens is None:
        return plan.draw_routed(rng)
    # Layer after layer: the encoder's MoE layers come first.
    return np.concatenate([plan.draw_routed(rng, slice(0, plan.decoder_from)),
                           plan.decoder.draw_routed(rng, slice(plan.decoder_from, None))])


def _mean_field(plan: RoutingPlan, routed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kept assignments per source class (… × classes × experts) and dropped per task (… × tasks) of routed
    assignments (… × tasks × experts): each chip sends its tokens in the realised proportions."""
    classes, row_of = plan.source_classes
    realised = routed / np.maximum(plan.task_totals, 1)[:, None]  # realised share of each task's tokens per expert
    per_task = classes[:, :, None] * realised[..., None, :, :]  # (…, classes, tasks, experts)
    mean = per_task.sum(axis=-2)
    if plan.capacity_factor is None:
        return mean, np.zeros(routed.shape[:-1])
    class_tokens = classes.sum(axis=1)
    overflow = _expected_overflow(class_tokens[:, None], mean, _capacity(plan, class_tokens, routed.shape[-1])[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        drop_share = np.where(mean > 0, overflow / mean, 0.0)
    chips_per_class = np.bincount(row_of, minlength=len(classes)).astype(np.float64)
    dropped = np.einsum("k,...kte,...ke->...t", chips_per_class, per_task, drop_share)
    return mean - overflow, dropped


def expected_sources(plan: RoutingPlan, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected kept assignments per source class (classes × experts) and each rank's class."""
    kept, row_of, _, _ = _sources(plan, layer, None)
    return kept, row_of


def route_layer(plan: RoutingPlan, layout: Layout, placement: Placement, layer: int,
                rng: np.random.Generator | None, dispatch_map: DispatchMap | None = None) -> LayerRouting:
    """Sample one MoE layer of one micro-batch (``rng=None``: its expectation): loads, drops and the dispatch.
    `dispatch_map`: ``plan.at(layer).dispatch_map(layout)``, built once by callers that route many layers."""
    plan = plan.at(layer)
    kept, row_of, routed, dropped = _sources(plan, layer, rng)
    if dispatch_map is None or dispatch_map.row_of is not row_of:  # built for other rows (an exact draw's, say)
        dispatch_map = plan.dispatch_map(layout, sampled=rng is not None)
    return _through_placement(plan, placement, layer, dispatch_map, kept[None], routed[None], dropped[None])[0]


def route_batch(plan: RoutingPlan, placement: Placement, layer: int, routed: np.ndarray,
                dispatch_map: DispatchMap) -> list[LayerRouting]:
    """Mean field: one layer of several micro-batches at once, from their draws (micro-batches × tasks × experts,
    rows of :func:`draw_micro_batch`)."""
    plan = plan.at(layer)
    kept, dropped = _mean_field(plan, routed)
    return _through_placement(plan, placement, layer, dispatch_map, kept, routed, dropped)


def _through_placement(plan: RoutingPlan, placement: Placement, layer: int, dispatch_map: DispatchMap, kept: np.ndarray,
                       routed: np.ndarray, dropped: np.ndarray) -> list[LayerRouting]:
    """Routings of kept assignments (micro-batches × rows × experts) mapped through the placement onto ranks."""
    if plan.padded:
        # GShard's einsum dispatch works on fixed [experts, capacity] buffers: the empty slots travel in the
        # all-to-all and go through the experts like real tokens, so load follows capacity, not demand.
        row_capacity = np.zeros(kept.shape[1])
        row_capacity[dispatch_map.row_of] = _capacity(plan, plan.task_tokens.sum(axis=1), kept.shape[2])
        kept = np.broadcast_to(row_capacity[None, :, None], kept.shape)
    shares = placement.token_shares(layer)  # experts × ranks
    per_rank = kept @ shares.toarray()  # (micro-batches, rows, positions): kept assignments to each rank of the group
    chip_tokens = dispatch_map.chip_tokens(per_rank)
    chip_slots = np.bincount(shares.indices, minlength=dispatch_map.layout.expert)[dispatch_map.position][dispatch_map.in_id_order]
    return [LayerRouting(routed=routed[m], dropped=dropped[m], per_rank=per_rank[m], chip_slots=chip_slots,
                         map=dispatch_map, chip_tokens=chip_tokens[m]) for m in range(len(kept))]
