"""Collectives over groups of ranks mapped to physical chips.

Every algorithm is written as a list of phases — the traffic of one step and
how many identical steps follow — and the network model times each phase.
Nothing here assumes a link speed: contention between concurrent groups, a
ring step that must cross a spine, or a twisted wraparound all come from
routing the phase's bytes on the real topology.

Algorithms (``bytes`` is the per-rank buffer S; conventions as NCCL-tests):
- ``direct`` all-to-all: every rank sends S/p to every other rank at once.
- ``ring``: reduce-scatter then all-gather around one unidirectional ring:
  2(p−1) steps of S/p each. On a ring of links of bandwidth B this is the
  textbook T = 2(p−1)/p · S/B + 2(p−1)·α.
- ``bidir_ring``: the same with half the data going each way round.
- ``torus``: per-dimension bidirectional rings (reduce-scatter along x, then
  y on the x-shard, then z; all-gather back), for groups that form a box.
- ``rings``: NCCL's rings on GPU nodes: one channel per GPU of a node, each a ring
  through every rank that crosses from node to node on one rail (it leaves a node
  from the GPU whose NIC reaches the next node's GPU on the same rail, having
  visited the node's other GPUs over NVLink), the channels' rails all different,
  the data split evenly over them. Every step of every channel runs at once, so
  the NVLink and NIC parts of the ring pipeline as NCCL's do: the busbw of a
  multi-node all-reduce is the node's NICs together, 8 × 25 GB/s on a DGX A100.
- ``hierarchical``: the multi-axis scheme over (GPUs in a node, nodes): NVLink
  reduce-scatter, inter-node all-reduce per local rank, NVLink all-gather, one
  after the other.
- ``nvls``: all-reduce in the switch (NVLink SHARP, NCCL's NVLS on NVSwitch 3
  nodes): each rank sends its buffer up to the switch once, which sums and
  multicasts the result back, so every GPU's links carry S each way, at the
  share ``in_switch_efficiency`` of the NVLink bandwidth, after a fixed latency
  (``in_switch_latency``). ``auto`` picks it for an all-reduce inside one node
  whose switch reduces where it beats the rings — large buffers; small ones pay
  less latency on the rings — as NCCL's tuner does.
- ``multi_slice``: groups spanning slices of a multi-slice cluster: the slice's
  own scheme reduce-scatters inside every slice, a ring across the slices
  all-reduces each shard over the DCN (the chips at the same position of every
  slice, host to host, as PaLM's cross-pod transfer), and the slice's scheme
  all-gathers back. Its DCN phases carry ``tier="dcn"``.
Reduce-scatter and all-gather are the first and second halves of these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from pathsim.version import __version__
from pathsim.choices import ALGORITHMS, OPS
from pathsim.cluster import ClusterConfig, load_cluster
from pathsim.errors import PathsimConfigError
from pathsim.limits import check_allocation
from pathsim.network import PhaseTiming, get_model
from pathsim.network.nccl import StepRun
from pathsim.topology import FatTree, MultiSlice, Topology, Torus, build_topology
from pathsim.traffic import Traffic
from pathsim.units import parse_bytes

# Bus-bandwidth factor: bytes each rank's links must move per byte of S (NCCL-tests convention).
_BUS_FACTOR = {
    "all_to_all": lambda p: (p - 1) / p,
    "all_reduce": lambda p: 2 * (p - 1) / p,
    "reduce_scatter": lambda p: (p - 1) / p,
    "all_gather": lambda p: (p - 1) / p,
}


@dataclass(frozen=True)
class Phase:
    label: str
    traffic: Traffic
    repeat: int
    tier: str = "slice"  # "dcn" when the phase's traffic crosses slices over the data-center network
    in_switch: bool = False  # reduced in the switch (nvls): timed at the bandwidth in-switch reductions reach


class LinkUsage(BaseModel):
    link: str
    link_class: str
    bytes: float
    utilisation: float


class PhaseSummary(BaseModel):
    label: str
    tier: str
    repeat: int
    time_s: float
    network_bytes: float


class CollectiveResult(BaseModel):
    cluster: str
    op: str
    algorithm: str
    protocol: str  # the communication library's protocol (NCCL's LL, LL128 or Simple); "" where none is named
    model: str
    ranks_per_group: int
    groups: int
    bytes_per_rank: float
    time_s: float
    bandwidth_time_s: float
    latency_time_s: float
    algbw_bytes_per_s: float
    busbw_bytes_per_s: float
    max_link_utilisation: float
    hottest_links: list[LinkUsage]
    phases: list[PhaseSummary]
    pathsim_version: str = __version__


def make_groups(num_chips: int, groups: "int | list[list[int]] | np.ndarray | None") -> np.ndarray:
    """Groups as a (G × p) array of chip ids; an int splits the chips into that many consecutive blocks."""
    if groups is None:
        return np.arange(num_chips)[None, :]
    if isinstance(groups, (int, np.integer)):
        if groups < 1 or num_chips % groups or num_chips // groups < 2:
            raise PathsimConfigError("<arguments>", "groups", f"{num_chips} chips do not split into {groups} equal groups of at least 2",
                                     f"use a divisor of {num_chips} no larger than {num_chips // 2}")
        return np.arange(num_chips).reshape(int(groups), -1)
    try:
        array = np.array(groups, dtype=np.int64)
    except (ValueError, TypeError):
        raise PathsimConfigError("<arguments>", "groups", "groups must be equal-sized lists of integer chip ids",
                                 "give e.g. [[0,1,2,3],[4,5,6,7]]") from None
    if array.ndim != 2 or array.shape[1] < 2:
        raise PathsimConfigError("<arguments>", "groups", "need a list of groups of at least 2 ranks each", "give e.g. [[0,1,2,3],[4,5,6,7]]")
    if array.min() < 0 or array.max() >= num_chips or len(np.unique(array)) != array.size:
        raise PathsimConfigError("<arguments>", "groups", f"chip ids must be distinct and within 0..{num_chips - 1}", "fix the group lists")
    return array


def _ring_step(num_chips: int, rings: np.ndarray, chunk: float, bidirectional: bool) -> Traffic:
    """Every rank of every ring (row) sends `chunk` bytes to its successor (and, bidirectional, half each way)."""
    src = rings.ravel()
    nxt = np.roll(rings, -1, axis=1).ravel()
    if not bidirectional:
        return Traffic.from_flows(num_chips, src, nxt, np.full(len(src), chunk))
    prev = np.roll(rings, 1, axis=1).ravel()
    return Traffic.from_flows(num_chips, np.concatenate([src, src]), np.concatenate([nxt, prev]),
                              np.full(2 * len(src), chunk / 2))


def _box_grid(topology: Torus, group: np.ndarray) -> np.ndarray | None:
    """The group as an array over the torus axes if it fills a box of coordinates, else None."""
    coords = topology.coords[group]
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    shape = tuple((hi - lo + 1).tolist())
    if int(np.prod(shape)) != len(group):
        return None
    grid = np.full(shape, -1, dtype=np.int64)
    grid[tuple((coords - lo).T)] = group
    return grid if (grid >= 0).all() else None


def _node_grid(topology: FatTree, group: np.ndarray) -> np.ndarray | None:
    """The group as [local rank, node] if it holds the same count (> 1) of GPUs in each of ≥ 2 nodes."""
    nodes = topology.node_of[group]
    unique, counts = np.unique(nodes, return_counts=True)
    if len(unique) < 2 or counts.min() != counts.max() or counts[0] < 2:
        return None
    order = np.lexsort((group, nodes))
    return group[order].reshape(len(unique), counts[0]).T


# Per grid axis: (bidirectional rings?, tier, closed?). Tier "dcn" marks the axis that crosses slices; an axis is
# closed when its last rank neighbours its first (a torus axis with its wraparound), open when it is a line of
# chips (a mesh axis, or part of a torus axis).
Axes = list[tuple[bool, str, bool]]


def _grids(topology: Topology, groups: np.ndarray, algorithm: str) -> tuple[str, list[np.ndarray], Axes]:
    """Resolve 'auto' and lay each group out as a multi-axis grid of ranks."""
    if isinstance(topology, MultiSlice):
        return _multi_slice_grids(topology, groups, algorithm)
    if algorithm == "multi_slice":
        raise PathsimConfigError("<arguments>", "algorithm", "'multi_slice' needs a cluster of several slices joined by a DCN",
                                 "use --algorithm auto")
    on_nodes = (lambda g: _node_grid(topology, g)) if isinstance(topology, FatTree) else None
    candidates = {"torus": (lambda g: _box_grid(topology, g)) if isinstance(topology, Torus) else None,
                  "rings": on_nodes, "hierarchical": on_nodes}
    order = [algorithm] if algorithm != "auto" else ["torus", "rings", "ring"]
    for name in order:
        if name in ("ring", "bidir_ring"):
            return name, [g.copy() for g in groups], [(name == "bidir_ring", "slice", True)]
        layout = candidates.get(name)
        if layout is None:
            if algorithm != "auto":
                raise PathsimConfigError("<arguments>", "algorithm", f"{name!r} needs a {'torus' if name == 'torus' else 'GPU fat-tree'} topology",
                                         "use --algorithm auto or ring")
            continue
        grids = [layout(g) for g in groups]
        if all(grid is not None for grid in grids) and len({grid.shape for grid in grids}) == 1:
            if name == "torus":  # an axis is closed when the group spans a torus dimension with its wraparound
                return name, grids, [(True, "slice", bool(topology.wrap[d]) and grids[0].shape[d] == topology.dims[d])
                                     for d in range(grids[0].ndim)]
            return name, grids, [(False, "slice", True)] * grids[0].ndim
        if algorithm != "auto":
            what = "a box of torus coordinates" if name == "torus" else "an equal number of GPUs in each of several nodes"
            raise PathsimConfigError("<arguments>", "algorithm", f"{name!r} needs every group to be {what}", "use --algorithm ring")
    raise AssertionError("unreachable: ring always applies")


def _multi_slice_grids(topology: MultiSlice, groups: np.ndarray, algorithm: str) -> tuple[str, list[np.ndarray], Axes]:
    """Groups inside one slice use the slice's own algorithms; groups spanning slices go hierarchical:
    the slice's algorithm over each slice's members, then a ring across the slices over the DCN."""
    n = topology.chips_per_slice
    slice_of = topology.slice_of[groups]
    offsets = (slice_of * n)[:, :1]
    if (slice_of == slice_of[:, :1]).all() and algorithm != "multi_slice":
        name, grids, axes = _grids(topology.inner, groups - offsets, algorithm)
        return name, [grid + offset for grid, offset in zip(grids, offsets[:, 0])], axes
    if algorithm not in ("auto", "multi_slice"):
        raise PathsimConfigError("<arguments>", "algorithm", f"{algorithm!r} cannot span slices: the groups hold chips of several slices",
                                 "use --algorithm auto or multi_slice")
    # Each group as (slices it touches, chips in each), slice-major: sort every row by slice, then check that
    # every row touches the same number of slices with the same number of chips in each.
    order = np.argsort(slice_of, axis=1, kind="stable")
    by_slice = np.take_along_axis(groups, order, axis=1)
    slice_sorted = np.take_along_axis(slice_of, order, axis=1)
    touched = (np.diff(slice_sorted, axis=1) != 0).sum(axis=1) + 1
    size = groups.shape[1]
    if (touched != touched[0]).any():
        raise PathsimConfigError("<arguments>", "groups", "groups spanning slices must all have the same shape (slices × chips per slice)",
                                 "give every group the same number of slices and chips per slice")
    count = int(touched[0])
    blocks = slice_sorted.reshape(len(groups), count, -1) if size % count == 0 else None
    if blocks is None or (blocks != blocks[:, :, :1]).any():
        raise PathsimConfigError("<arguments>", "groups", "a group spanning slices must hold the same number of chips in each",
                                 "give every slice the same share of each group")
    members = by_slice.reshape(len(groups), count, size // count)  # (groups, slices, chips per slice)
    if members.shape[2] == 1:
        return "multi_slice", list(members[:, :, 0]), [(False, "dcn", True)]
    _, inner_grids, inner_axes = _grids(topology.inner, members.reshape(-1, members.shape[2]) % n, "auto")
    if len({grid.shape for grid in inner_grids}) != 1:
        raise PathsimConfigError("<arguments>", "groups", "a group's members in each slice must form the same shape",
                                 "place each group at the same positions in every slice")
    local = np.array(inner_grids).reshape(len(groups), count, *inner_grids[0].shape)
    offset = (members[:, :, 0] // n * n).reshape(len(groups), count, *[1] * inner_grids[0].ndim)
    grids = list(np.moveaxis(local + offset, 1, -1))  # the slices are each grid's last axis
    return "multi_slice", grids, inner_axes + [(False, "dcn", True)]


def _multi_axis_phases(num_chips: int, grids: list[np.ndarray], nbytes: float, axes: Axes, op: str) -> list[Phase]:
    """Reduce-scatter along each axis in turn (shards shrink), then all-gather back.

    On a closed bidirectional axis (a torus ring) each rank passes shards both ways, so a shard travels at most
    half way round: ⌊k/2⌋ steps of neighbour hops carry the (k−1) shards, half each way (the JAX scaling book's
    bidirectional AllGather, ⌊k/2⌋ hops). On an open one (a line of chips) shards are relayed both ways along the
    line: k−1 steps of one hop each, the end links carrying k−1 shards (the book's no-wraparound case)."""
    reduce_steps, gather_steps = [], []
    shard = nbytes
    active = [a for a in range(grids[0].ndim) if grids[0].shape[a] > 1]
    for a in active:
        size = grids[0].shape[a]
        bidirectional, tier, closed = axes[a]
        rings = np.concatenate([np.moveaxis(g, a, -1).reshape(-1, size) for g in grids])
        chunk = shard / size
        if not bidirectional:
            step, repeat = _ring_step(num_chips, rings, chunk, False), size - 1
        elif closed:
            repeat = size // 2  # each step sends chunk·(k−1)/(2·repeat) each way (_ring_step halves what it is given)
            step = _ring_step(num_chips, rings, chunk * (size - 1) / repeat, True)
        else:
            step, repeat = _line_step(num_chips, rings, chunk), size - 1
        name = f"axis {a} ({size} ranks)" if len(active) > 1 else f"{size} ranks"
        if tier == "dcn":
            name = f"across {size} slices (DCN)"
        reduce_steps.append(Phase(f"reduce-scatter {name}", step, repeat, tier))
        gather_steps.insert(0, Phase(f"all-gather {name}", step, repeat, tier))
        shard = chunk
    if op == "reduce_scatter":
        return reduce_steps
    if op == "all_gather":
        return gather_steps
    return reduce_steps + gather_steps


def _line_step(num_chips: int, lines: np.ndarray, chunk: float) -> Traffic:
    """Every rank of every line (row) sends `chunk` bytes to each neighbour it has along the line."""
    src = np.concatenate([lines[:, :-1].ravel(), lines[:, 1:].ravel()])
    dst = np.concatenate([lines[:, 1:].ravel(), lines[:, :-1].ravel()])
    return Traffic.from_flows(num_chips, src, dst, np.full(len(src), chunk))


def _entry_rails(nodes: int, width: int) -> list[int]:
    """Channel 0's entry position into each node (of `width` GPUs a node), so that it leaves every node from another
    position than it entered at (it visits the node's other GPUs in between) and enters the next node at the
    position it left from, round the whole ring: 0, 1, 0, 1, … for an even number of nodes, 0, 1, 2 then 0, 1, …
    for an odd one. Channel c adds c to every position, so in each node the channels enter at distinct GPUs."""
    if nodes == 1 or width == 1:
        return [0] * nodes
    if nodes % 2 == 0 or width == 2:  # (two GPUs a node and an odd number of nodes: the wrap stays on one rail)
        return [k % 2 for k in range(nodes)]
    return [0, 1, 2] + [k % 2 for k in range(nodes - 3)]


def _channel_rings(grid: np.ndarray) -> np.ndarray:
    """NCCL's rings over a group laid out as [position in node, node]: one ring per position (channel)."""
    width, nodes = grid.shape
    entries = _entry_rails(nodes, width)
    rings = []
    for c in range(width):
        order = []
        for k in range(nodes):
            enter, leave = (entries[k] + c) % width, (entries[(k + 1) % nodes] + c) % width
            middle = [r for r in range(width) if r not in (enter, leave)]
            order += [grid[r, k] for r in ([enter] + middle + ([leave] if leave != enter else []))]
        rings.append(order)
    return np.array(rings, dtype=np.int64)


def _rings_phases(num_chips: int, grids: list[np.ndarray], nbytes: float, op: str) -> list[Phase]:
    """Every channel's ring steps at once, each channel carrying 1/channels of the data."""
    rings = np.concatenate([_channel_rings(g) for g in grids])
    channels, size = grids[0].shape[0], rings.shape[1]
    step = _ring_step(num_chips, rings, nbytes / size / channels, False)
    name = f"{size} ranks, {channels} channels"
    reduce_steps = [Phase(f"reduce-scatter {name}", step, size - 1)]
    gather_steps = [Phase(f"all-gather {name}", step, size - 1)]
    return reduce_steps if op == "reduce_scatter" else gather_steps if op == "all_gather" else reduce_steps + gather_steps


def _all_to_all_phase(num_chips: int, groups: np.ndarray, nbytes: float, matrix: np.ndarray | None) -> Phase:
    p = groups.shape[1]
    if matrix is None:
        # Uniform: every rank sends S/p to each rank of its group, itself included (a local copy the network never
        # sees), so the traffic is the rank-(groups) product of group indicators: no N x N matrix is built.
        member = np.zeros((num_chips, groups.shape[0]))
        member[groups, np.arange(groups.shape[0])[:, None]] = 1.0
        return Phase("all-to-all", Traffic.from_factors(member * (nbytes / p), member.T.copy()), 1)
    block = np.asarray(matrix, dtype=np.float64)
    check_allocation(8.0 * num_chips**2, f"a {num_chips:,} x {num_chips:,} traffic matrix", "<arguments>", "matrix",
                     "give the matrix for fewer ranks, or drop --matrix for a uniform all-to-all (which needs none)")
    full = np.zeros((num_chips, num_chips))
    if block.shape == (p, p):  # row/column i is rank i of each group, whatever chip it sits on
        for g in groups:
            full[np.ix_(g, g)] += block
    else:
        raise PathsimConfigError("<arguments>", "matrix", f"traffic matrix is {block.shape}, expected {p}x{p} (one group's ranks)",
                                 "give a square matrix with one row and column per rank of a group")
    return Phase("all-to-all", Traffic.from_matrix(full), 1)


def _in_switch_phase(topology: Topology, groups: np.ndarray, nbytes: float) -> Phase | None:
    """NVLS: every rank's buffer up to the switch and the sum back, as traffic that loads each rank's links with S
    each way (S/(p−1) to every other rank through the one switch); None unless every link it loads reduces in the
    switch (one NVSwitch 3 node per group)."""
    if not isinstance(topology, FatTree) or (topology.node_of[groups] != topology.node_of[groups[:, :1]]).any():
        return None  # (an NVSwitch reduces inside its node only)
    p = groups.shape[1]
    src = np.repeat(groups, p, axis=1).ravel()  # every ordered pair of each group's ranks (flows, not a matrix:
    dst = np.tile(groups, (1, p)).ravel()  # the groups of a 16K-GPU cluster would make a 2 GB one)
    other = src != dst
    traffic = Traffic.from_flows(topology.num_chips, src[other], dst[other], np.full(int(other.sum()), nbytes / (p - 1)))
    loads = topology.link_loads(traffic)
    if not (topology.in_switch_share[loads > 0] > 0).all():
        return None
    return Phase(f"all-reduce in the switch ({p} ranks)", traffic, 1, in_switch=True)


def collective_phases(topology: Topology, op: str, nbytes: float, groups: np.ndarray,
                      algorithm: str = "auto", matrix: np.ndarray | None = None, network=None) -> tuple[str, list[Phase]]:
    """The algorithm chosen and the phases it runs. With ``auto`` on GPU nodes, NCCL's rings or the hierarchical
    scheme, whichever `network` (a network model) times faster for this size, as NCCL's tuner picks by size: the
    rings' bandwidth wins for large buffers, the hierarchical scheme's 2(local + nodes) steps for small ones,
    where a ring's 2(ranks − 1) latencies dominate. Without a network model, the rings."""
    if op not in OPS:
        raise PathsimConfigError("<arguments>", "op", f"unknown collective {op!r}", f"choose one of {', '.join(OPS)}")
    if algorithm not in ALGORITHMS:
        raise PathsimConfigError("<arguments>", "algorithm", f"unknown algorithm {algorithm!r}", f"choose one of {', '.join(ALGORITHMS)}")
    if op == "all_to_all":
        if algorithm not in ("auto", "direct"):
            raise PathsimConfigError("<arguments>", "algorithm", f"all_to_all supports only 'direct', not {algorithm!r}", "drop --algorithm")
        return "direct", [_all_to_all_phase(topology.num_chips, groups, nbytes, matrix)]
    if algorithm == "direct":
        raise PathsimConfigError("<arguments>", "algorithm", f"'direct' is for all_to_all, not {op}", "use auto, ring, bidir_ring, torus or hierarchical")
    in_switch = None
    if algorithm in ("auto", "nvls") and op == "all_reduce" and topology.in_switch_share.any():
        in_switch = _in_switch_phase(topology, groups, nbytes)
        if in_switch is not None and (algorithm == "nvls" or network is None):
            return "nvls", [in_switch]
    if algorithm == "nvls":
        raise PathsimConfigError("<arguments>", "algorithm", "'nvls' reduces an all_reduce inside one node whose NVSwitch "
                                 "reduces (a cluster whose nvlink sets in_switch_efficiency)", "use --algorithm auto or ring")

    def seconds(phases: list[Phase]) -> float:
        return time_phases(topology, network, op, nbytes, groups, phases).time_s

    chosen, grids, axes = _grids(topology, groups, algorithm)
    if chosen != "rings":
        phases = _multi_axis_phases(topology.num_chips, grids, nbytes, axes, op)
        if algorithm != "auto" or network is None or in_switch is None:
            return chosen, phases
        phases_s = seconds(phases)
    else:
        phases = _rings_phases(topology.num_chips, grids, nbytes, op)
        if algorithm != "auto" or network is None:
            return chosen, phases
        stepped = _multi_axis_phases(topology.num_chips, grids, nbytes, axes, op)
        phases_s, stepped_s = seconds(phases), seconds(stepped)
        if stepped_s < phases_s:
            chosen, phases, phases_s = "hierarchical", stepped, stepped_s
    # NVLS wins where its one pass through the switch outruns the other scheme: large buffers; its fixed latency
    # (in_switch_latency) leaves small ones to the rings, as NCCL's tuner does.
    if in_switch is not None and seconds([in_switch]) <= phases_s:
        return "nvls", [in_switch]
    return chosen, phases


@dataclass(frozen=True)
class TimedPhase:
    phase: Phase
    timing: PhaseTiming  # as the network model timed one of its steps
    bandwidth_time_s: float  # every repeat's drain time together, under the protocol
    latency_s: float  # ... and their latency
    time_s: float  # the two together


@dataclass(frozen=True)
class CollectiveTiming:
    protocol: str  # the communication library's protocol ("" where the cluster names no library)
    phases: list[TimedPhase]

    @property
    def time_s(self) -> float:
        return sum(p.time_s for p in self.phases)


def time_phases(topology: Topology, network, op: str, nbytes: float, groups: np.ndarray, phases: list[Phase]) -> CollectiveTiming:
    """A collective's phases timed by the network model and, on a cluster that names its communication library
    (``collective_library``), under the protocol that library's tuner picks: NCCL's step latencies in place of
    the links' per-hop ones and each protocol's share of the bandwidth (pathsim/network/nccl.py). All-to-alls
    (peer-to-peer sends) and in-switch reductions (NVLS runs Simple only) keep the network model's time."""
    all_to_all = op == "all_to_all"
    timings = [network.phase(p.traffic, all_to_all=all_to_all, in_switch=p.in_switch) for p in phases]
    library = topology.collective_library
    in_switch = any(p.in_switch for p in phases)
    if library is None or all_to_all or in_switch:
        return CollectiveTiming("Simple" if in_switch and library is not None else "",
                                [TimedPhase(p, t, p.repeat * t.bandwidth_time_s, p.repeat * t.latency_s, p.repeat * t.time_s)
                                 for p, t in zip(phases, timings)])
    node_of = topology.node_of
    runs = []
    for phase, timing in zip(phases, timings):
        src, dst, sent = phase.traffic.flows()
        total = float(sent.sum())
        crossing = float(sent[node_of[src] != node_of[dst]].sum()) / total if total > 0 else 0.0
        runs.append(StepRun(phase.repeat, timing.bandwidth_time_s, crossing))
    nodes = len(np.unique(node_of[groups[0]]))
    best = library.fastest(op, nbytes * _BUS_FACTOR[op](groups.shape[1]), nodes, runs)
    return CollectiveTiming(best.protocol, [TimedPhase(p, t, b, lat, b + lat) for p, t, (b, lat) in zip(phases, timings, best.seconds)])


def run_collective(cluster: "ClusterConfig | str", op: str, nbytes: "float | str", *, model: str = "fast",
                   groups: "int | list[list[int]] | None" = None, algorithm: str = "auto",
                   matrix: np.ndarray | None = None, top_links: int = 5) -> CollectiveResult:
    """Time one collective on a cluster (a preset name, a YAML path or a ClusterConfig)."""
    config = load_cluster(cluster)
    topology = build_topology(config)
    try:
        size = parse_bytes(nbytes)
    except ValueError as exc:
        raise PathsimConfigError("<arguments>", "bytes", str(exc), "write a size like 256MiB") from None
    if size <= 0:
        raise PathsimConfigError("<arguments>", "bytes", f"size must be positive, got {nbytes!r}", "write a size like 256MiB")
    group_array = make_groups(topology.num_chips, groups)
    network = get_model(model, topology)
    chosen, phases = collective_phases(topology, op, size, group_array, algorithm, matrix, network)

    timed = time_phases(topology, network, op, size, group_array, phases)
    total = drain = latency = 0.0
    busy_s = np.zeros(topology.num_links)
    link_bytes = np.zeros(topology.num_links)
    summaries = []
    for t in timed.phases:
        phase = t.phase
        total += t.time_s
        drain += t.bandwidth_time_s
        latency += t.latency_s
        busy_s += phase.repeat * t.timing.link_bytes / topology.link_bandwidth
        link_bytes += phase.repeat * t.timing.link_bytes
        summaries.append(PhaseSummary(label=phase.label, tier=phase.tier, repeat=phase.repeat, time_s=t.time_s / phase.repeat,
                                      network_bytes=phase.traffic.network_bytes))
    utilisation = busy_s / total if total > 0 else busy_s
    hottest = np.argsort(-utilisation, kind="stable")[:top_links]
    p = group_array.shape[1]
    algbw = size / total if total > 0 else float("inf")
    return CollectiveResult(
        cluster=config.name, op=op, algorithm=chosen, protocol=timed.protocol, model=model, ranks_per_group=p, groups=group_array.shape[0],
        bytes_per_rank=size, time_s=total, bandwidth_time_s=drain, latency_time_s=latency,
        algbw_bytes_per_s=algbw, busbw_bytes_per_s=algbw * _BUS_FACTOR[op](p),
        max_link_utilisation=float(utilisation.max(initial=0.0)),
        hottest_links=[LinkUsage(link=topology.link_label(int(i)), link_class=str(topology.link_class[i]),
                                 bytes=float(link_bytes[i]), utilisation=float(utilisation[i])) for i in hottest],
        phases=summaries)
