"""Custom networks from an edge list, routed by shortest-path ECMP.

Routing splits traffic evenly, at every node, over the outgoing links that lie
on a shortest (fewest-hop) path to the destination — per-hop ECMP, as IP
routers and InfiniBand adaptive routing approximate it. The fraction of every
chip pair on every link is computed once per topology, destination by
destination and distance level by distance level (numpy over all sources at
once), and kept as a sparse (pairs × links) matrix.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path

from pathsim.topology.base import Topology


class CustomGraph(Topology):
    @cached_property
    def _pair_incidence(self) -> sp.csr_matrix:
        n, nodes = self.num_chips, self.num_nodes
        adjacency = sp.csr_matrix((np.ones(self.num_links), (self.link_src, self.link_dst)), shape=(nodes, nodes))
        dist = shortest_path(adjacency, directed=True, unweighted=True, indices=None)
        rows, cols, vals = [], [], []
        for d in range(n):
            to_d = dist[:, d]
            on_path = to_d[self.link_src] == to_d[self.link_dst] + 1
            next_hops = np.bincount(self.link_src[on_path], minlength=nodes)
            through = np.zeros((n, nodes))  # share of source s's flow passing node u
            through[np.arange(n), np.arange(n)] = 1.0
            through[d] = 0.0
            finite = np.isfinite(to_d[:n])
            for level in range(int(to_d[:n][finite].max()), 0, -1):
                links = np.nonzero(on_path & (to_d[self.link_src] == level))[0]
                if len(links) == 0:
                    continue
                share = through[:, self.link_src[links]] / next_hops[self.link_src[links]]
                np.add.at(through.T, self.link_dst[links], share.T)
                s, j = np.nonzero(share)
                rows.append(s * n + d)
                cols.append(links[j])
                vals.append(share[s, j])
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n * n, self.num_links))

    def incidence(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        return self._pair_incidence[np.asarray(src) * self.num_chips + np.asarray(dst)]
