"""GPU clusters: NVLink/NVSwitch nodes on a two- or three-tier fat tree.

Nodes: GPUs (0..N-1), one NVSwitch per node (modelled as one non-blocking
switch; the real node has 4 in H100), leaf switches, spine switches, and, in a
three-tier fabric, core switches.

Routing:
- same node: GPU → NVSwitch → GPU over NVLink;
- same leaf (other node): GPU → NIC → leaf → NIC → GPU;
- same pod: up to the leaf, split evenly over the pod's spines (ECMP), down;
- across pods (three tiers): up to the leaf, over the pod's spines, split evenly
  over every core switch, down through the other pod's spines to its leaf.
Rail-optimized fabrics (NVIDIA DGX SuperPOD reference architecture, RA-11333-001:
"traffic per rail is always one hop away from the other 31 nodes in a SU;
traffic between rails traverses the spine layer") wire GPU r of each node to
rail r's leaf. Cross-rail traffic between nodes first crosses NVLink to the
GPU of its own node on the destination's rail, then stays on that rail (NCCL's
PXN, "PCI × NVLink", the default since NCCL 2.12 for point-to-point and
all-to-all traffic); with ``pxn`` off it goes up through a spine instead.

Sizing: a leaf of radix R with oversubscription o has R·o/(1+o) down ports and
R/(1+o) up ports. In a two-tier fabric a spine spends all its ports on leaves;
spines number the fewest that divide the leaves' up ports evenly and hold them
(ceil(leaves × up / R)); each leaf–spine pair is one bundle of up/spines cables,
so a 4-SU H100 SuperPOD (32 leaves) gets the 16 spines of the reference design.
A three-tier fabric groups nodes into pods (the Llama 3 paper's "192 racks ...
form a pod of 3,072 GPUs"); a pod's spines are sized the same way from the
spines' down ports, and their bandwidth up to the core is their bandwidth down
divided by the pod's oversubscription (Llama 3: 1:7). Core switches number
enough to take every spine's uplinks; each spine–core pair carries an equal
share of the spine's up bandwidth (an average of the real cabling's, which
ECMP loads evenly all the same).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from pathsim.errors import PathsimConfigError
from pathsim.topology.base import Topology
from pathsim.traffic import CopyPattern, Traffic


class FatTree(Topology):
    def __init__(self, name: str, *, nodes: int, gpus_per_node: int, rail_optimized: bool, switch_radix: int,
                 oversubscription: float, nics_per_gpu: int, nvlink: tuple[float, float] | None,
                 nic: tuple[float, float], fabric: tuple[float, float], pod_nodes: int | None = None,
                 pod_oversubscription: float = 1.0, spine_radix: int | None = None,
                 core: tuple[float, float] | None = None, pxn: bool = False):
        gpn = gpus_per_node
        self.pxn = bool(pxn and rail_optimized and gpn > 1)
        n_gpus = nodes * gpn
        down = int(switch_radix * oversubscription / (1 + oversubscription))
        up = switch_radix - down
        gpus_per_leaf = down // nics_per_gpu
        if gpus_per_leaf < 1:
            raise PathsimConfigError(name, "topology.switch_radix", f"a leaf of radix {switch_radix} has no room for a GPU with {nics_per_gpu} NICs", "raise switch_radix")
        gpu = np.arange(n_gpus)
        self.node_of = gpu // gpn
        if rail_optimized:
            nodes_per_leaf = gpus_per_leaf
            self.leaf_of = (self.node_of // nodes_per_leaf) * gpn + gpu % gpn
        else:
            self.leaf_of = gpu // gpus_per_leaf
        n_leaves = int(self.leaf_of.max()) + 1
        leaf = np.arange(n_leaves)
        # Pods: consecutive nodes whose leaves share one set of spines. Without pods the whole fabric is one.
        three_tier = pod_nodes is not None and pod_nodes < nodes
        if three_tier:
            # A pod holds whole leaves: rail groups of nodes, or a whole number of leaves' GPUs.
            step = gpus_per_leaf if rail_optimized else gpus_per_leaf // math.gcd(gpus_per_leaf, gpn)
            if pod_nodes % step:
                raise PathsimConfigError(
                    name, "topology.pod.nodes",
                    f"a pod of {pod_nodes} nodes splits a leaf (each leaf takes {gpus_per_leaf} GPUs"
                    f"{' of one rail' if rail_optimized else ''})", f"use a multiple of {step} nodes per pod")
            leaves_per_pod = (pod_nodes // gpus_per_leaf) * gpn if rail_optimized else pod_nodes * gpn // gpus_per_leaf
            self.pod_of_leaf = leaf // leaves_per_pod
            radix = spine_radix or switch_radix
            spine_down = int(radix * pod_oversubscription / (1 + pod_oversubscription))
            where, what = "topology.pod.switch_radix", f"a spine of radix {radix} with {pod_oversubscription}:1 up to the core"
        else:
            leaves_per_pod = n_leaves
            self.pod_of_leaf = np.zeros(n_leaves, dtype=np.int64)
            spine_down = switch_radix
            where, what = "topology.nodes", f"one spine of radix {switch_radix}"
        if leaves_per_pod > spine_down:
            raise PathsimConfigError(
                name, where,
                f"{leaves_per_pod} leaves exceed what {what} can join ({spine_down} leaves; "
                f"{'a pod' if three_tier else 'two-tier fabric'})",
                "add a pod block (a three-tier fabric), use fewer nodes per pod, or a larger switch_radix"
                if not three_tier else "use fewer nodes per pod or a larger pod switch_radix")
        self.pod_of = self.pod_of_leaf[self.leaf_of]
        n_pods = int(self.pod_of_leaf.max()) + 1
        # Fewest spines per pod whose down ports hold every leaf's uplinks, each leaf–spine bundle the same width.
        needed = math.ceil(leaves_per_pod * up / spine_down)
        n_spines = 0 if n_leaves == 1 else min(s for s in range(1, up + 1) if up % s == 0 and s >= needed)
        self.gpus_per_node, self.n_leaves, self.n_spines, self.n_pods = gpn, n_leaves, n_spines, n_pods
        spines = n_spines * n_pods
        # Core: the spines' uplinks, a 1/oversubscription share of their bandwidth down (a full pod's).
        spine_up_ports = leaves_per_pod * (up // max(n_spines, 1)) / pod_oversubscription
        n_cores = max(1, math.ceil(spines * spine_up_ports / (spine_radix or switch_radix))) if three_tier else 0
        self.n_cores = n_cores
        has_nvswitch = gpn > 1
        nvs_base = n_gpus
        leaf_base = nvs_base + (nodes if has_nvswitch else 0)
        spine_base = leaf_base + n_leaves
        core_base = spine_base + spines
        names = [f"gpu{g}" for g in gpu]
        names += [f"node{n}.nvswitch" for n in range(nodes)] if has_nvswitch else []
        names += [f"leaf{l}" for l in range(n_leaves)]
        names += ([f"pod{p}.spine{s}" for p in range(n_pods) for s in range(n_spines)] if three_tier
                  else [f"spine{s}" for s in range(n_spines)])
        names += [f"core{c}" for c in range(n_cores)]

        src, dst, bw, lat, cls = [], [], [], [], []

        def add(a, b, spec, label):
            src.append(a)
            dst.append(b)
            bw.append(np.full(len(a), spec[0]))
            lat.append(np.full(len(a), spec[1]))
            cls.append(np.full(len(a), label))
            return sum(len(x) for x in src) - len(a)

        self._nv_up = add(gpu, nvs_base + self.node_of, nvlink, "nvlink") if has_nvswitch else -1
        self._nv_down = add(nvs_base + self.node_of, gpu, nvlink, "nvlink") if has_nvswitch else -1
        nic_bw = (nic[0] * nics_per_gpu, nic[1])
        self._nic_up = add(gpu, leaf_base + self.leaf_of, nic_bw, "nic")
        self._nic_down = add(leaf_base + self.leaf_of, gpu, nic_bw, "nic")
        if n_spines:
            # Leaf l meets spine s of its pod over link l·S + s.
            spine_of = (self.pod_of_leaf[:, None] * n_spines + np.arange(n_spines)[None, :]).ravel()
            bundle = (fabric[0] * (up // n_spines), fabric[1])
            self._up = add(leaf_base + np.repeat(leaf, n_spines), spine_base + spine_of, bundle, "fabric")
            self._down = add(spine_base + spine_of, leaf_base + np.repeat(leaf, n_spines), bundle, "fabric")
        if n_cores:
            core = core or fabric
            # Spine s meets core c over link s·C + c; each pair an equal share of the spine's uplinks.
            spine, to_core = np.repeat(np.arange(spines), n_cores), np.tile(np.arange(n_cores), spines)
            trunk = (core[0] * spine_up_ports / n_cores, core[1])
            self._core_up = add(spine_base + spine, core_base + to_core, trunk, "core")
            self._core_down = add(core_base + to_core, spine_base + spine, trunk, "core")
        self._latency = {"nvlink": nvlink[1] if nvlink else 0.0, "nic": nic[1], "fabric": fabric[1],
                         "core": (core or fabric)[1] if n_cores else 0.0}
        super().__init__(name, n_gpus, names, np.concatenate(src), np.concatenate(dst),
                         np.concatenate(bw), np.concatenate(lat), np.concatenate(cls))

    def _classes(self, src: np.ndarray, dst: np.ndarray):
        """Masks of flows that stay in a node, stay under a leaf, cross the spines, and (of those) cross pods."""
        same_node = (self.node_of[src] == self.node_of[dst]) & (self.gpus_per_node > 1)
        same_leaf = ~same_node & (self.leaf_of[src] == self.leaf_of[dst])
        cross = ~same_node & ~same_leaf
        return same_node, same_leaf, cross, cross & (self.pod_of[src] != self.pod_of[dst])

    def _entry(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The GPU where each flow enters the network: its source, or with PXN, for a flow to another node's GPU
        on another rail, the GPU of the source's node on the destination's rail (reached over NVLink)."""
        if not self.pxn:
            return src
        gpn = self.gpus_per_node
        return np.where(self.node_of[src] != self.node_of[dst], self.node_of[src] * gpn + dst % gpn, src)

    def incidence(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        flow = np.arange(len(src))
        rows, cols, vals = [], [], []

        def put(sel, links, share=1.0):
            rows.append(flow[sel])
            cols.append(links)
            vals.append(np.full(int(sel.sum()), share))

        entry = self._entry(src, dst)
        hop = entry != src
        if hop.any():  # PXN: over NVLink to the GPU on the destination's rail first
            put(hop, self._nv_up + src[hop])
            put(hop, self._nv_down + entry[hop])
        src = entry
        same_node, same_leaf, cross, far = self._classes(src, dst)
        if same_node.any():
            put(same_node, self._nv_up + src[same_node])
            put(same_node, self._nv_down + dst[same_node])
        network = ~same_node
        put(network, self._nic_up + src[network])
        put(network, self._nic_down + dst[network])
        S, C = self.n_spines, self.n_cores
        if cross.any():
            f = np.repeat(flow[cross], S)
            spine = np.tile(np.arange(S), int(cross.sum()))
            rows += [f, f]
            cols += [self._up + self.leaf_of[src[f]] * S + spine, self._down + self.leaf_of[dst[f]] * S + spine]
            vals += [np.full(len(f), 1.0 / S)] * 2
        if far.any():  # every (spine, core) pair of the source pod up, every (core, spine) pair of the other down
            f = np.repeat(flow[far], S * C)
            pair = np.tile(np.arange(S * C), int(far.sum()))
            spine, core = pair // C, pair % C
            rows += [f, f]
            cols += [self._core_up + (self.pod_of[src[f]] * S + spine) * C + core,
                     self._core_down + (self.pod_of[dst[f]] * S + spine) * C + core]
            vals += [np.full(len(f), 1.0 / (S * C))] * 2
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(src), self.num_links))

    def _route_latency(self) -> list[float]:
        """Latency of a route that stays in a node, under a leaf, in a pod, and across pods."""
        lat = self._latency
        return [2 * lat["nvlink"], 2 * lat["nic"], 2 * (lat["nic"] + lat["fabric"]),
                2 * (lat["nic"] + lat["fabric"] + lat["core"])]

    def path_latency(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        src, dst = np.asarray(src), np.asarray(dst)
        entry = self._entry(src, dst)
        same_node, same_leaf, cross, far = self._classes(entry, dst)
        node, leaf, pod, pods = self._route_latency()
        return np.select([same_node, same_leaf, far], [node, leaf, pods], pod) + np.where(entry != src, node, 0.0)

    def max_path_latency(self, traffic: Traffic, link_bytes: np.ndarray | None = None) -> float:
        if not _factored(traffic):
            return super().max_path_latency(traffic)
        # A route's latency depends only on its class (same node, same leaf, across the spines, across pods), so
        # the longest is that of the classes whose links carry bytes: read off the loads, no N×N scan of flows.
        loads, n = self.link_loads(traffic) if link_bytes is None else link_bytes, self.num_chips
        node, leaf, pod, pods = self._route_latency()
        spines = self.n_pods * self.n_spines
        on_nvlink = self._nv_up >= 0 and loads[self._nv_up:self._nv_up + n].any()
        network = [leaf if loads[self._nic_up:self._nic_up + n].any() else 0.0,
                   pod if self.n_spines and loads[self._up:self._up + self.n_leaves * self.n_spines].any() else 0.0,
                   pods if self.n_cores and loads[self._core_up:self._core_up + spines * self.n_cores].any() else 0.0]
        if self.pxn and on_nvlink and max(network) > 0:
            # NVLink bytes may be PXN's first hop of a network route (the loads do not say which): the longest
            # route is then taken as that hop plus the network's longest, an upper bound by one NVLink crossing.
            return float(node + max(network))
        return float(max([node if on_nvlink else 0.0, *network]))

    def link_loads(self, traffic: Traffic) -> np.ndarray:
        if not traffic.is_dense:
            return self._flow_loads(*traffic.flows())
        if traffic.copies is not None and not self.pxn:
            return self._copy_loads(traffic.copies)
        if _factored(traffic):
            return self._factored_loads(*traffic.factors)
        T = traffic.matrix.copy()
        np.fill_diagonal(T, 0.0)
        n = self.num_chips
        gpn = self.gpus_per_node
        loads = np.zeros(self.num_links)
        if self.pxn:
            T, hop = self._pxn_matrix(T)
        blocks = T.reshape(n // gpn, gpn, n // gpn, gpn)
        nodes = np.arange(n // gpn)
        intra = blocks[nodes, :, nodes, :] if gpn > 1 else np.zeros((n, 1, 1))  # [node, i, j]
        intra_out = intra.sum(axis=2).ravel()
        intra_in = intra.sum(axis=1).ravel()
        if gpn > 1:
            loads[self._nv_up:self._nv_up + n] = intra_out + (hop.sum(axis=2).ravel() if self.pxn else 0.0)
            loads[self._nv_down:self._nv_down + n] = intra_in + (hop.sum(axis=1).ravel() if self.pxn else 0.0)
        loads[self._nic_up:self._nic_up + n] = T.sum(axis=1) - intra_out
        loads[self._nic_down:self._nic_down + n] = T.sum(axis=0) - intra_in
        if self.n_spines:
            onehot = np.zeros((n, self.n_leaves))
            onehot[np.arange(n), self.leaf_of] = 1.0
            leaf_traffic = onehot.T @ T @ onehot
            if gpn > 1:  # NVLink carries intra-node bytes even when the GPUs sit under different leaves
                self._less_intra_node(leaf_traffic, self.leaf_of.reshape(-1, gpn), intra)
            np.fill_diagonal(leaf_traffic, 0.0)
            self._spread_over_spines(loads, leaf_traffic)
        return loads

    def _pxn_matrix(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """PXN on a dense matrix: the network's matrix (each node's bytes to another node's GPU sent from the
        node's GPU on that rail) and the first hops over NVLink, [node, from GPU, to GPU] (zero diagonal)."""
        n, gpn = self.num_chips, self.gpus_per_node
        nodes = n // gpn
        T4 = T.reshape(nodes, gpn, nodes, gpn)
        other = ~np.eye(nodes, dtype=bool)[:, None, :, None]
        between = np.where(other, T4, 0.0)
        hop = between.sum(axis=2)  # [a, i, j]: GPU i of node a to rail j of the other nodes
        hop[:, np.arange(gpn), np.arange(gpn)] = 0.0  # already on the destination's rail
        network = np.where(other, 0.0, T4)  # the intra-node blocks stay
        a, b, j = np.meshgrid(np.arange(nodes), np.arange(nodes), np.arange(gpn), indexing="ij")
        network[a, j, b, j] += between.sum(axis=1)[a, b, j]  # node a to GPU (b, j), from GPU (a, j)
        return network.reshape(n, n), hop

    def _spread_over_spines(self, loads: np.ndarray, leaf_traffic: np.ndarray) -> None:
        """Loads of the leaf–spine and spine–core links from the bytes between leaves (zero diagonal), by ECMP:
        a leaf's bytes to other leaves split evenly over its pod's spines, a pod's bytes to other pods evenly
        over every (spine, core) pair."""
        leaves = self.n_leaves
        self._spread_leaf_uplinks(loads, leaf_traffic.sum(axis=1), leaf_traffic.sum(axis=0))
        if self.n_cores:
            by_pod = np.zeros((self.n_pods, leaves))
            by_pod[self.pod_of_leaf, np.arange(leaves)] = 1.0
            pod_traffic = by_pod @ leaf_traffic @ by_pod.T
            np.fill_diagonal(pod_traffic, 0.0)
            self._spread_over_cores(loads, pod_traffic.sum(axis=1), pod_traffic.sum(axis=0))

    def _spread_leaf_uplinks(self, loads: np.ndarray, leaf_out: np.ndarray, leaf_in: np.ndarray) -> None:
        """Each leaf's bytes to and from other leaves, split evenly over its pod's spines (ECMP)."""
        S, count = self.n_spines, self.n_leaves * self.n_spines
        loads[self._up:self._up + count] = np.repeat(np.maximum(leaf_out, 0.0) / S, S)
        loads[self._down:self._down + count] = np.repeat(np.maximum(leaf_in, 0.0) / S, S)

    def _less_intra_node(self, leaf_traffic: np.ndarray, node_leaves: np.ndarray, blocks: np.ndarray) -> None:
        """Take each node's own block (bytes between its GPUs, which NVLink carries) off the bytes between the leaves
        its GPUs sit under, in place: `node_leaves` (nodes × GPUs per node) are the GPUs' leaves, `blocks` (nodes ×
        GPUs × GPUs) the blocks."""
        L, gpn = self.n_leaves, self.gpus_per_node
        pair = (np.repeat(node_leaves, gpn, axis=1) * L + np.tile(node_leaves, (1, gpn))).ravel()
        leaf_traffic -= np.bincount(pair, weights=blocks.ravel(), minlength=L * L).reshape(L, L)

    def _spread_over_cores(self, loads: np.ndarray, pod_out: np.ndarray, pod_in: np.ndarray) -> None:
        pairs = self.n_spines * self.n_cores
        count = self.n_pods * pairs
        loads[self._core_up:self._core_up + count] = np.repeat(np.maximum(pod_out, 0.0) / pairs, pairs)
        loads[self._core_down:self._core_down + count] = np.repeat(np.maximum(pod_in, 0.0) / pairs, pairs)

    def _copy_loads(self, copies: CopyPattern) -> np.ndarray:
        """Loads of copies of one pattern, without PXN: what a copy's rank sends over NVLink, out of its node, out
        of its leaf and out of its pod depends only on which of its copy's ranks share its node, leaf and pod and
        on the classes. Copies alike in that (their chips' node, leaf and pod labels equal once renumbered in order
        of appearance) share one P×P computation, and each copy's sums go to its own chips, leaves and pods by
        bincount: O(families · P² + G · P) for the phase, where the factors cost O(N · G · classes)."""
        n, gpn = self.num_chips, self.gpus_per_node
        families = self._copy_families(copies.chip_of, copies.class_of)
        chip_of = copies.chip_of
        sums = {name: np.zeros(chip_of.shape) for name in ("nv_out", "nv_in", "nic_out", "nic_in", "leaf_out", "leaf_in",
                                                           "pod_out", "pod_in")}
        for members, (node, leaf, pod) in families:
            first = members[0]
            m = copies.weights[copies.class_of[first]]  # (P, P): rank p to position q
            m = m * ~np.eye(len(m), dtype=bool)  # a rank's bytes to itself stay put
            same_node = (node[:, None] == node[None, :]) & (gpn > 1)
            off = m * ~same_node
            cross = off * (leaf[:, None] != leaf[None, :])
            far = cross * (pod[:, None] != pod[None, :])
            for name, part in (("nv", m * same_node), ("nic", off), ("leaf", cross), ("pod", far)):
                sums[f"{name}_out"][members] = part.sum(axis=1)
                sums[f"{name}_in"][members] = part.sum(axis=0)
        up, down = ("in", "out") if copies.reverse else ("out", "in")  # a combine runs the dispatch backwards
        chips = chip_of.ravel()
        loads = np.zeros(self.num_links)
        if gpn > 1:
            loads[self._nv_up:self._nv_up + n] = np.bincount(chips, sums[f"nv_{up}"].ravel(), minlength=n)
            loads[self._nv_down:self._nv_down + n] = np.bincount(chips, sums[f"nv_{down}"].ravel(), minlength=n)
        loads[self._nic_up:self._nic_up + n] = np.bincount(chips, sums[f"nic_{up}"].ravel(), minlength=n)
        loads[self._nic_down:self._nic_down + n] = np.bincount(chips, sums[f"nic_{down}"].ravel(), minlength=n)
        if self.n_spines:
            leaves = self.leaf_of[chips]
            self._spread_leaf_uplinks(loads, np.bincount(leaves, sums[f"leaf_{up}"].ravel(), minlength=self.n_leaves),
                                      np.bincount(leaves, sums[f"leaf_{down}"].ravel(), minlength=self.n_leaves))
            if self.n_cores:
                pods = self.pod_of[chips]
                self._spread_over_cores(loads, np.bincount(pods, sums[f"pod_{up}"].ravel(), minlength=self.n_pods),
                                        np.bincount(pods, sums[f"pod_{down}"].ravel(), minlength=self.n_pods))
        return loads

    def _copy_families(self, chip_of: np.ndarray, class_of: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
        """Copies grouped by their class row and their chips' node, leaf and pod labels renumbered in order of
        appearance; per family, its copies and those labels. Cached for the layout's grid (every layer reuses it)."""
        cached = self.__dict__.get("_copy_family_cache")
        if cached is not None and cached[0] is chip_of and cached[1] is class_of:
            return cached[2]

        def renumbered(labels: np.ndarray) -> np.ndarray:
            """(G, P) labels as the first position in their row holding the same label: rows that group their
            positions alike get equal rows. A stable sort puts each label's first position at its run's start."""
            order = np.argsort(labels, axis=1, kind="stable")
            ordered = np.take_along_axis(labels, order, axis=1)
            starts = np.ones(labels.shape, dtype=bool)
            starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
            run_start = np.maximum.accumulate(np.where(starts, np.arange(labels.shape[1]), 0), axis=1)
            out = np.empty_like(labels)
            np.put_along_axis(out, order, np.take_along_axis(order, run_start, axis=1), axis=1)
            return out

        node, leaf, pod = (renumbered(a[chip_of]) for a in (self.node_of, self.leaf_of, self.pod_of))
        key = np.concatenate([class_of, node, leaf, pod], axis=1)
        _, first, family = np.unique(key, axis=0, return_index=True, return_inverse=True)
        family = family.ravel()
        families = [(np.flatnonzero(family == f), (node[i], leaf[i], pod[i])) for f, i in enumerate(first)]
        self._copy_family_cache = (chip_of, class_of, families)
        return families

    def _flow_loads(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """Loads of a list of flows, routed as :meth:`incidence` routes them, by bincount: no sparse matrix."""
        loads = np.zeros(self.num_links)
        if len(src) == 0:
            return loads
        n = self.num_chips
        entry = self._entry(src, dst)
        hop = entry != src
        if hop.any():  # PXN's first hop over NVLink, then the flow leaves from the destination's rail
            src, dst, nbytes = (np.concatenate([src[hop], entry]), np.concatenate([entry[hop], dst]),
                                np.concatenate([nbytes[hop], nbytes]))
        same_node, _, cross, far = self._classes(src, dst)
        network = ~same_node
        if same_node.any():
            loads[self._nv_up:self._nv_up + n] = np.bincount(src[same_node], nbytes[same_node], minlength=n)
            loads[self._nv_down:self._nv_down + n] = np.bincount(dst[same_node], nbytes[same_node], minlength=n)
        loads[self._nic_up:self._nic_up + n] = np.bincount(src[network], nbytes[network], minlength=n)
        loads[self._nic_down:self._nic_down + n] = np.bincount(dst[network], nbytes[network], minlength=n)
        if cross.any():
            leaves = self.n_leaves
            self._spread_leaf_uplinks(loads, np.bincount(self.leaf_of[src[cross]], nbytes[cross], minlength=leaves),
                                      np.bincount(self.leaf_of[dst[cross]], nbytes[cross], minlength=leaves))
        if far.any():
            pods = self.n_pods
            self._spread_over_cores(loads, np.bincount(self.pod_of[src[far]], nbytes[far], minlength=pods),
                                    np.bincount(self.pod_of[dst[far]], nbytes[far], minlength=pods))
        return loads

    def _factored_loads(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """The loads of traffic ``left @ right`` (N×r, r×N) without forming it: O(N·r) to find the nodes whose GPUs
        send or receive, then O(n·r·(GPUs per node + leaves)) on those n (a pipeline stage's, a job's)."""
        n, gpn, r = self.num_chips, self.gpus_per_node, left.shape[1]
        nodes = n // gpn
        busy = (left.any(axis=1) | right.any(axis=0)).reshape(nodes, gpn).any(axis=1)
        active = np.flatnonzero(busy)
        k = len(active)
        gpus = (active[:, None] * gpn + np.arange(gpn)[None, :]).ravel()  # the active nodes' GPUs, in id order
        left, right = left[gpus], right[:, gpus]  # the other rows and columns are zero
        if self.pxn:
            return self._pxn_factored_loads(left, right, active, gpus)
        loads = np.zeros(self.num_links)
        # Each node's own block of the matrix, local copies (the diagonal) included, then without them.
        block = np.einsum("kir,krj->kij", left.reshape(k, gpn, r), right.reshape(r, k, gpn).transpose(1, 0, 2))
        diagonal = np.einsum("sr,rs->s", left, right)
        intra = block.copy()
        intra.reshape(k, gpn * gpn)[:, ::gpn + 1] = 0.0
        intra_out, intra_in = intra.sum(axis=2).ravel(), intra.sum(axis=1).ravel()
        if gpn > 1:
            loads[self._nv_up + gpus] = intra_out
            loads[self._nv_down + gpus] = intra_in
        loads[self._nic_up + gpus] = left @ right.sum(axis=1) - diagonal - intra_out
        loads[self._nic_down + gpus] = left.sum(axis=0) @ right - diagonal - intra_in
        if self.n_spines:
            L = self.n_leaves
            leaf = self.leaf_of[gpus]
            by_leaf = _grouped_sum(leaf, left, L)
            to_leaf = _grouped_sum(leaf, right.T, L).T
            leaf_traffic = by_leaf @ to_leaf
            # NVLink carries intra-node bytes (and a GPU's copies to itself stay put) even across leaves.
            self._less_intra_node(leaf_traffic, leaf.reshape(k, gpn), block)
            np.fill_diagonal(leaf_traffic, 0.0)
            self._spread_over_spines(loads, leaf_traffic)
        # The subtractions leave rounding residue where bytes cancel exactly (intra-node traffic counted across
        # rails, then taken off): clear it, so a link no byte crosses carries none and sets no latency.
        loads[loads < 1e-12 * max(float(left.sum(axis=0) @ right.sum(axis=1)), 0.0)] = 0.0
        return loads

    def _pxn_factored_loads(self, left: np.ndarray, right: np.ndarray, active: np.ndarray, gpus: np.ndarray) -> np.ndarray:
        """:meth:`_factored_loads` with PXN, on the active nodes' rows and columns: O(n·r·GPUs per node²).

        Node a's bytes to GPU (b, j) leave from GPU (a, j), so what leaves a rail-j NIC, a rail-j leaf or a pod
        is what its node, group of nodes or pod sends to rail j elsewhere; what arrives is as without PXN."""
        gpn, r, k = self.gpus_per_node, left.shape[1], len(active)
        loads = np.zeros(self.num_links)
        L3, R3 = left.reshape(k, gpn, r), right.reshape(r, k, gpn)  # [node, GPU, ρ], [ρ, node, rail]
        block = np.einsum("kir,rkj->kij", L3, R3)
        total_left, R_rail = left.sum(axis=0), R3.sum(axis=1)  # ρ; ρ × rail
        intra = block.copy()
        intra[:, np.arange(gpn), np.arange(gpn)] = 0.0
        hop = L3 @ R_rail - block  # GPU (a, i) to rail j of the other nodes
        hop[:, np.arange(gpn), np.arange(gpn)] = 0.0
        loads[self._nv_up + gpus] = (intra.sum(axis=2) + hop.sum(axis=2)).ravel()
        loads[self._nv_down + gpus] = (intra.sum(axis=1) + hop.sum(axis=1)).ravel()
        by_node = L3.sum(axis=1)  # node × ρ
        own = np.einsum("kr,rkj->kj", by_node, R3)  # node a to its own GPUs, by rail
        loads[self._nic_up + gpus] = (by_node @ R_rail - own).ravel()
        loads[self._nic_down + gpus] = (total_left @ right - own.ravel())
        if self.n_spines:
            group = self.leaf_of[gpus[::gpn]] // gpn  # the group of nodes sharing a set of rail leaves
            G = self.n_leaves // gpn
            by_group = _grouped_sum(group, by_node, G)
            to_group = _grouped_sum(group, R3.transpose(1, 0, 2), G)
            within = np.einsum("gr,grj->gj", by_group, to_group)
            leaf_up = (by_group @ R_rail - within).ravel()  # leaf (g, j): group g's bytes to rail j elsewhere
            leaf_down = (np.einsum("r,grj->gj", total_left, to_group) - within).ravel()
            self._spread_leaf_uplinks(loads, leaf_up, leaf_down)
            if self.n_cores:
                pod = self.pod_of[gpus[::gpn]]
                by_pod = _grouped_sum(pod, by_node, self.n_pods)
                to_pod = _grouped_sum(pod, R3.sum(axis=2).T, self.n_pods)
                inside = np.einsum("pr,pr->p", by_pod, to_pod)
                self._spread_over_cores(loads, by_pod @ to_pod.sum(axis=0) - inside, to_pod @ total_left - inside)
        loads[loads < 1e-12 * max(float(total_left @ right.sum(axis=1)), 0.0)] = 0.0
        return loads

    def by_tier(self, link_values: np.ndarray) -> dict[str, np.ndarray]:
        """Per-link values by tier, each (…, up / down): ``nvlink`` and ``nic`` as (node, GPU of the node, 2),
        ``fabric`` as (leaf, spine of its pod, 2), ``core`` as (spine, core switch, 2); tiers the fabric lacks are
        left out."""
        values = np.asarray(link_values, dtype=np.float64)
        gpus, nodes = self.num_chips, self.num_chips // self.gpus_per_node

        def pair(up: int, down: int, shape: tuple[int, int]) -> np.ndarray:
            count = shape[0] * shape[1]
            return np.stack([values[up:up + count].reshape(shape), values[down:down + count].reshape(shape)], axis=-1)

        tiers = {}
        if self._nv_up >= 0:
            tiers["nvlink"] = pair(self._nv_up, self._nv_down, (nodes, self.gpus_per_node))
        tiers["nic"] = pair(self._nic_up, self._nic_down, (nodes, self.gpus_per_node))
        if self.n_spines:
            tiers["fabric"] = pair(self._up, self._down, (self.n_leaves, self.n_spines))
        if self.n_cores:
            tiers["core"] = pair(self._core_up, self._core_down, (self.n_pods * self.n_spines, self.n_cores))
        assert sum(t.size for t in tiers.values()) == values.size == self.num_links and gpus == nodes * self.gpus_per_node
        return tiers

    @property
    def network_switches(self) -> int:
        return self.n_leaves + self.n_pods * self.n_spines + self.n_cores  # NVSwitches sit inside the nodes: host power

    def describe(self) -> dict:
        info = super().describe()
        info.update(gpus_per_node=self.gpus_per_node, leaves=self.n_leaves, spines=self.n_pods * self.n_spines)
        if self.n_cores:
            info.update(pods=self.n_pods, spines_per_pod=self.n_spines, cores=self.n_cores)
        return info


def _grouped_sum(index: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """``out[g] = values[index == g].sum(axis=0)``, as a sparse one-hot product (np.add.at is ten times slower)."""
    n = len(index)
    onehot = sp.csr_matrix((np.ones(n), (index, np.arange(n))), shape=(groups, n))
    return np.asarray(onehot @ values.reshape(n, -1)).reshape((groups,) + values.shape[1:])


def _factored(traffic: Traffic) -> bool:
    """Traffic held as low-rank factors or copies and not (yet) as a matrix: its loads need no N×N array."""
    return (traffic.copies is not None or traffic._factors is not None) and traffic._matrix is None
