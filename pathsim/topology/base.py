"""What every built topology offers the network models.

A topology is a directed graph of nodes (chips first, ids 0..num_chips-1, then
switches) and links, each link one direction of a physical cable. The same links
live in numpy arrays (``link_src``, ``link_bandwidth``, ...) indexed by link id,
which is what the network models compute with; ``graph`` is the networkx view
for inspection and generic algorithms.

Routing is the subclass's job and is expressed two ways that must agree:
``incidence`` (flows × links matrix of the fraction of each flow on each link,
for the fluid model) and ``link_loads`` (bytes on every link for a whole phase,
vectorised per topology family, for the fast model).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from functools import cached_property

import networkx as nx
import numpy as np
import scipy.sparse as sp

from pathsim.traffic import Traffic


class Topology(ABC):
    def __init__(self, name: str, num_chips: int, node_names: list[str],
                 link_src: np.ndarray, link_dst: np.ndarray,
                 link_bandwidth: np.ndarray, link_latency: np.ndarray, link_class: np.ndarray):
        self.name = name
        self.num_chips = int(num_chips)
        self.node_names = node_names
        self.link_src = np.asarray(link_src, dtype=np.int64)
        self.link_dst = np.asarray(link_dst, dtype=np.int64)
        self.link_bandwidth = np.asarray(link_bandwidth, dtype=np.float64)
        self.link_latency = np.asarray(link_latency, dtype=np.float64)
        self.link_class = np.asarray(link_class)
        self.all_to_all_share = np.ones(len(self.link_src))  # of each link's bandwidth an all-to-all reaches
        self.in_switch_share = np.zeros(len(self.link_src))  # ... and an all-reduce reduced in the switch (0: cannot)
        self.in_switch_latency = np.zeros(len(self.link_src))  # an in-switch all-reduce's least latency on each link
        self.collective_library = None  # an NcclTuning where the cluster names its GPUs' communication library
        if np.any(self.link_bandwidth <= 0):
            bad = int(np.argmin(self.link_bandwidth))
            raise ValueError(f"link {self.link_label(bad)} has non-positive bandwidth")

    def with_link_bandwidth(self, link_bandwidth: np.ndarray) -> "Topology":
        """The same graph and routing with other link bandwidths (e.g. what other jobs leave free of each link)."""
        other = copy.copy(self)
        other.__dict__.pop("graph", None)  # the networkx view carries bandwidths: rebuild it on demand
        other.link_bandwidth = np.asarray(link_bandwidth, dtype=np.float64)
        if other.link_bandwidth.shape != self.link_bandwidth.shape or np.any(other.link_bandwidth <= 0):
            raise ValueError(f"need one positive bandwidth per link ({self.num_links})")
        return other

    def reached_bandwidth(self, all_to_all: bool = False, in_switch: bool = False) -> np.ndarray:
        """Per link, the bandwidth a phase's transfers reach: a collective's steps, an all-to-all's concurrent sends
        (LinkSpec.all_to_all_efficiency) or an in-switch reduction's (LinkSpec.in_switch_efficiency; 0 where the
        switch cannot reduce)."""
        if in_switch:
            return self.link_bandwidth * self.in_switch_share
        return self.link_bandwidth * self.all_to_all_share if all_to_all else self.link_bandwidth

    def in_switch_floor(self, used: np.ndarray) -> float:
        """The least latency an in-switch all-reduce over the links `used` (a boolean mask) has: the longest of their
        classes' in_switch_latency (the switch's fixed cost of reducing, whatever the route)."""
        return float(np.max(self.in_switch_latency[used], initial=0.0))

    @property
    def num_nodes(self) -> int:
        return len(self.node_names)

    @property
    def num_links(self) -> int:
        return len(self.link_src)

    @cached_property
    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph(name=self.name)
        for node, label in enumerate(self.node_names):
            g.add_node(node, label=label, kind="chip" if node < self.num_chips else "switch")
        for i in range(self.num_links):
            g.add_edge(int(self.link_src[i]), int(self.link_dst[i]), link_id=i,
                       bandwidth=float(self.link_bandwidth[i]), latency=float(self.link_latency[i]),
                       link_class=str(self.link_class[i]))
        return g

    def is_connected(self) -> bool:
        """Every chip can reach every other chip along directed links."""
        adjacency = sp.csr_matrix((np.ones(self.num_links), (self.link_src, self.link_dst)),
                                  shape=(self.num_nodes, self.num_nodes))
        count, labels = sp.csgraph.connected_components(adjacency, directed=True, connection="strong")
        return count == 1 or len(set(labels[: self.num_chips].tolist())) == 1

    @property
    def network_switches(self) -> int:
        """Switches whose power the network pays for (those inside a host are host power)."""
        return self.num_nodes - self.num_chips

    def link_label(self, link: int) -> str:
        return f"{self.node_names[self.link_src[link]]} -> {self.node_names[self.link_dst[link]]}"

    # ---- routing -------------------------------------------------------
    @abstractmethod
    def incidence(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        """Fraction of each flow (row) carried by each link (column).

        Rows sum, per link on a path, to 1 for single-path routes; ECMP splits
        a flow's unit over equal-cost paths, so a row's entries are the share of
        that flow's bytes crossing each link.
        """

    def link_loads(self, traffic: Traffic) -> np.ndarray:
        """Bytes crossing every link during the phase."""
        src, dst, nbytes = traffic.flows()
        if len(src) == 0:
            return np.zeros(self.num_links)
        return self.incidence(src, dst).T @ nbytes

    def path_latency(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Latency of each flow's route (ECMP routes: the share-weighted mean)."""
        if len(src) == 0:
            return np.zeros(0)
        return self.incidence(src, dst) @ self.link_latency

    def max_path_latency(self, traffic: Traffic, link_bytes: np.ndarray | None = None) -> float:
        """The longest route latency among the phase's flows (`link_bytes`: the phase's loads, where a topology
        can read the answer off them instead of scanning flows)."""
        src, dst, _ = traffic.flows()
        return float(self.path_latency(src, dst).max(initial=0.0))

    def describe(self) -> dict:
        """A short summary for `pathsim validate` and results."""
        return {
            "name": self.name,
            "chips": self.num_chips,
            "switches": self.num_nodes - self.num_chips,
            "links": self.num_links,
        }
