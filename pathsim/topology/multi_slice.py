"""Several slices joined by the data-center network (DCN): multi-pod TPU and multi-fabric GPU clusters.

Nodes: the chips of every slice (slice-major: slice s holds chips s·n ..
(s+1)·n − 1), each slice's own switches, then one node per host, one DCN
aggregation switch per slice and one DCN core.

Links, in id blocks: every slice's own links (slice s's inner link l is
s·L + l), chip ↔ its host (PCIe), host ↔ its slice's aggregation (the host's
NICs, shared by its chips), aggregation ↔ core (the slice's DCN uplink, its
NIC total over the oversubscription).

Routing: traffic inside a slice follows the slice's own routing (dimension
order on a torus, NVLink / leaf / spine on a fat tree) and never touches the
DCN. Traffic between slices leaves through the sending chip's own host, as
multislice TPU jobs and PaLM's cross-pod gradient transfer do ("1:1 transfer
between the corresponding hosts on the two pods", Chowdhery et al. 2022,
§4): chip → host → aggregation → core → aggregation → host → chip. The DCN
core is non-blocking (Google's Jupiter fabric, Singh et al., SIGCOMM 2015);
contention appears at the NICs and at the slice uplinks.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp

from pathsim.topology.base import Topology
from pathsim.traffic import Traffic

UPLINK_CLASS = "dcn_uplink"


class MultiSlice(Topology):
    def __init__(self, name: str, inner: Topology, slices: int, chips_per_host: int,
                 host_link: tuple[float, float, str] | None, nic: tuple[float, float, str], nics_per_host: int,
                 oversubscription: float):
        self.inner, self.slices = inner, int(slices)
        n, L, S = inner.num_chips, inner.num_links, self.slices
        self.chips_per_slice, self.chips_per_host = n, int(chips_per_host)
        self.hosts_per_slice = n // self.chips_per_host
        H = self.hosts_per_slice
        N = S * n
        inner_switches = inner.num_nodes - n
        chip = np.arange(N)
        self.slice_of = chip // n
        self.local = chip % n
        self.host_of = self.slice_of * H + self.local // self.chips_per_host  # global host index

        switch_base = N
        host_base = switch_base + S * inner_switches
        agg_base = host_base + S * H
        core = agg_base + S

        def node(slice_index: np.ndarray, inner_node: np.ndarray) -> np.ndarray:
            """A slice's inner node id as a node of the whole cluster."""
            return np.where(inner_node < n, slice_index * n + inner_node,
                            switch_base + slice_index * inner_switches + (inner_node - n))

        s_of_link = np.repeat(np.arange(S), L)
        src = [node(s_of_link, np.tile(inner.link_src, S))]
        dst = [node(s_of_link, np.tile(inner.link_dst, S))]
        bw = [np.tile(inner.link_bandwidth, S)]
        lat = [np.tile(inner.link_latency, S)]
        cls = [np.tile(inner.link_class.astype(str), S)]

        def add(a, b, bandwidth, latency, label) -> int:
            first = sum(len(x) for x in src)
            src.append(np.asarray(a))
            dst.append(np.asarray(b))
            bw.append(np.full(len(a), float(bandwidth)))
            lat.append(np.full(len(a), float(latency)))
            cls.append(np.full(len(a), label))
            return first

        nic_bw, nic_latency, nic_class = nic[0] * nics_per_host, nic[1], nic[2]
        host_bw, host_latency, host_class = host_link if host_link is not None else (nic_bw, 0.0, "host")
        hosts = host_base + np.arange(S * H)
        aggs = agg_base + np.arange(S)
        uplink_bw = H * nic_bw / oversubscription
        self._chip_up = add(chip, host_base + self.host_of, host_bw, host_latency, host_class)
        self._chip_down = add(host_base + self.host_of, chip, host_bw, host_latency, host_class)
        self._nic_up = add(hosts, agg_base + np.arange(S * H) // H, nic_bw, nic_latency, nic_class)
        self._nic_down = add(agg_base + np.arange(S * H) // H, hosts, nic_bw, nic_latency, nic_class)
        self._uplink_up = add(aggs, np.full(S, core), uplink_bw, 0.0, UPLINK_CLASS)
        self._uplink_down = add(np.full(S, core), aggs, uplink_bw, 0.0, UPLINK_CLASS)
        self._cross_latency = 2 * (host_latency + nic_latency)

        inner_names = inner.node_names
        names = [f"s{s}:{inner_names[c]}" for s in range(S) for c in range(n)]
        names += [f"s{s}:{inner_names[n + j]}" for s in range(S) for j in range(inner_switches)]
        names += [f"s{s}:host{h}" for s in range(S) for h in range(H)]
        names += [f"s{s}:dcn" for s in range(S)] + ["dcn-core"]
        super().__init__(name, N, names, np.concatenate(src), np.concatenate(dst), np.concatenate(bw),
                         np.concatenate(lat), np.concatenate(cls))

    # ---- routing -------------------------------------------------------------
    def _cross_links(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The six DCN-path links of each cross-slice flow, (flows × 6)."""
        return np.stack([self._chip_up + src, self._nic_up + self.host_of[src], self._uplink_up + self.slice_of[src],
                         self._uplink_down + self.slice_of[dst], self._nic_down + self.host_of[dst],
                         self._chip_down + dst], axis=1)

    def incidence(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        same = self.slice_of[src] == self.slice_of[dst]
        flows = np.arange(len(src))
        rows, cols, vals = [], [], []
        if same.any():
            block = self.inner.incidence(self.local[src[same]], self.local[dst[same]]).tocoo()
            rows.append(flows[same][block.row])
            cols.append(block.col + self.slice_of[src[same]][block.row] * self.inner.num_links)
            vals.append(block.data)
        if (~same).any():
            links = self._cross_links(src[~same], dst[~same])
            rows.append(np.repeat(flows[~same], links.shape[1]))
            cols.append(links.ravel())
            vals.append(np.ones(links.size))
        if not rows:
            return sp.csr_matrix((len(src), self.num_links))
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(src), self.num_links))

    def path_latency(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        same = self.slice_of[src] == self.slice_of[dst]
        latency = np.full(len(src), self._cross_latency)
        if same.any():
            latency[same] = self.inner.path_latency(self.local[src[same]], self.local[dst[same]])
        return latency

    def _blocks(self, traffic: Traffic):
        """Each slice's own traffic, the bytes every chip sends and receives across slices, and the
        slice-to-slice byte matrix — from factors without the N×N matrix."""
        S, n = self.slices, self.chips_per_slice
        if traffic.factors is not None:
            left, right = traffic.factors
            r = left.shape[1]
            left_s, right_s = left.reshape(S, n, r), right.reshape(r, S, n)
            left_tot, right_tot = left_s.sum(axis=1), right_s.sum(axis=2)  # (S, r), (r, S)
            blocks = [Traffic.from_factors(left_s[s], right_s[:, s]) for s in range(S)]
            out = np.concatenate([left_s[s] @ (right_tot.sum(axis=1) - right_tot[:, s]) for s in range(S)])
            into = np.concatenate([(left_tot.sum(axis=0) - left_tot[s]) @ right_s[:, s] for s in range(S)])
            between = left_tot @ right_tot
        else:
            m = traffic.matrix.reshape(S, n, S, n)
            blocks = [Traffic.from_matrix(m[s, :, s, :]) for s in range(S)]
            # Summed block by block over the other slices (not total minus own), so traffic kept inside
            # the slices puts exactly zero bytes on the DCN.
            out = np.concatenate([sum(m[s, :, t, :].sum(axis=1) for t in range(S) if t != s) if S > 1 else np.zeros(n)
                                  for s in range(S)])
            into = np.concatenate([sum(m[t, :, s, :].sum(axis=0) for t in range(S) if t != s) if S > 1 else np.zeros(n)
                                   for s in range(S)])
            between = m.sum(axis=(1, 3))
        between = between.copy()
        np.fill_diagonal(between, 0.0)
        return blocks, np.maximum(out, 0.0), np.maximum(into, 0.0), between  # factors: round-off can dip below 0

    def link_loads(self, traffic: Traffic) -> np.ndarray:
        if not traffic.is_dense:
            return super().link_loads(traffic)
        blocks, out, into, between = self._blocks(traffic)
        N, L, S = self.num_chips, self.inner.num_links, self.slices
        loads = np.zeros(self.num_links)
        for s, block in enumerate(blocks):
            loads[s * L:(s + 1) * L] = self.inner.link_loads(block)
        loads[self._chip_up:self._chip_up + N] = out
        loads[self._chip_down:self._chip_down + N] = into
        hosts = S * self.hosts_per_slice
        loads[self._nic_up:self._nic_up + hosts] = out.reshape(hosts, -1).sum(axis=1)
        loads[self._nic_down:self._nic_down + hosts] = into.reshape(hosts, -1).sum(axis=1)
        loads[self._uplink_up:self._uplink_up + S] = between.sum(axis=1)
        loads[self._uplink_down:self._uplink_down + S] = between.sum(axis=0)
        return loads

    def max_path_latency(self, traffic: Traffic, link_bytes: np.ndarray | None = None) -> float:
        if not traffic.is_dense:
            return super().max_path_latency(traffic)
        blocks, out, _, _ = self._blocks(traffic)
        inside = max((self.inner.max_path_latency(b) for b in blocks), default=0.0)
        return max(inside, self._cross_latency if out.sum() > 0 else 0.0)

    # ---- structure -----------------------------------------------------------
    @cached_property
    def dcn_links(self) -> np.ndarray:
        """Ids of the links outside the slices (host links, NICs, uplinks)."""
        return np.arange(self.slices * self.inner.num_links, self.num_links)

    @cached_property
    def node_of(self) -> np.ndarray:
        """Each chip's GPU node (NVLink domain) across the slices, where the slices are fat trees: what a GPU
        communication library's tuner counts (pathsim/network/nccl.py)."""
        inner_nodes = int(self.inner.node_of.max()) + 1
        return self.slice_of * inner_nodes + self.inner.node_of[self.local]

    def slice_links(self, slice_index: int) -> slice:
        L = self.inner.num_links
        return slice(slice_index * L, (slice_index + 1) * L)

    def by_tier(self, link_values: np.ndarray) -> dict[str, np.ndarray]:
        """Per-link values by tier, each (…, up / down): ``host`` (chip, 2), ``nic`` (host, 2) and
        ``dcn_uplink`` (slice, 2); the slices' own links are left to the slice topology."""
        values = np.asarray(link_values, dtype=np.float64)

        def pair(up: int, down: int, count: int) -> np.ndarray:
            return np.stack([values[up:up + count], values[down:down + count]], axis=-1)

        return {"host": pair(self._chip_up, self._chip_down, self.num_chips),
                "nic": pair(self._nic_up, self._nic_down, self.slices * self.hosts_per_slice),
                "dcn_uplink": pair(self._uplink_up, self._uplink_down, self.slices)}

    @property
    def network_switches(self) -> int:
        # The DCN's own switches are shared data-center infrastructure, not this cluster's.
        return self.slices * self.inner.network_switches

    def describe(self) -> dict:
        info = super().describe()
        info["switches"] = self.network_switches  # hosts and the shared DCN are not this cluster's switches
        info["hosts"] = self.slices * self.hosts_per_slice
        inner = self.inner.describe()
        shape = (f"{inner['dims']} torus" if "dims" in inner
                 else f"fat tree of {inner.get('leaves', 0)} leaves and {inner.get('spines', 0)} spines")
        info.update(slices=self.slices, slice=f"{shape}, {self.chips_per_slice} chips on {self.hosts_per_slice} hosts")
        return info
