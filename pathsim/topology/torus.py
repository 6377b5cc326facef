"""Tori and meshes (1D/2D/3D), regular or twisted, with dimension-order routing.

Geometry. A torus is the quotient of the integer grid Z^D by a lattice of
periods. Chips are the points of the box [0,k_0)×…×[0,k_{D-1}), numbered in
row-major order, and chip p has a ``+d`` link to p+e_d and a ``-d`` link to
p-e_d, reduced back into the box. A regular torus has the periods k_d·e_d; a
mesh dimension has none (no wraparound links). The TPU v4 twisted torus only
changes the periods (see :func:`twisted_periods`), so one code path routes
every kind.

Routing (minimal dimension-order). A flow from s to t takes the shortest
vector v ≡ t−s (mod the periods) in hop count (L1 norm), then moves v_0 hops
along dimension 0, v_1 along dimension 1, and so on. When several shortest
vectors exist (a ring of even length, destination half-way round), the bytes
split evenly over them — "ties split evenly". This is the routing of Cámara et
al. for twisted tori and plain dimension-order routing on regular tori.

Speed. The fast model needs bytes per link for a dense N×N matrix at N=4096.
On regular tori each dimension's phase depends only on (the line it runs on,
its start, its end), so a partial sum of the matrix viewed as a 2D-dimensional
array gives the per-line traffic, and a small k×k×k incidence tensor per ring
turns it into link loads (an einsum) — O(N²) in total, no loop over chips.
Twisted tori and flow lists route flow by flow, vectorised: every flow becomes
D segments (start, signed hop count), added onto per-ring difference arrays.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from pathsim.limits import check_allocation
from pathsim.topology.base import Topology
from pathsim.traffic import CopyPattern, Traffic

AXIS_NAMES = "xyz"


def twisted_periods(dims: tuple[int, ...]) -> np.ndarray:
    """The periods (rows) of the TPU v4 twisted torus for n×n×2n or n×2n×2n.

    Following Cámara et al., "Twisted Torus Topologies for Enhanced
    Interconnection Networks" (IEEE TPDS 21(12), 2010), and as used by TPU v4
    (Jouppi et al., ISCA 2023, §2.6): the wraparound links of each short
    dimension (length n) are twisted by n chips along every long dimension
    (length 2n); the long dimensions wrap normally. E.g. for 4×4×8, the +x link
    of (3, y, z) goes to (0, y, (z+4) mod 8).
    """
    dims = tuple(int(k) for k in dims)
    n = min(dims)
    if len(dims) != 3 or sorted(dims) not in ([n, n, 2 * n], [n, 2 * n, 2 * n]):
        raise ValueError(f"twisted tori need shape n×n×2n or n×2n×2n, got {dims}")
    periods = np.diag(np.array(dims, dtype=np.int64))
    short = [d for d in range(3) if dims[d] == n]
    long_ = [d for d in range(3) if dims[d] == 2 * n]
    for d in short:
        for e in long_:
            periods[d, e] = n
    # Periods must be upper-triangular (Hermite form) for the box reduction;
    # a short dimension after a long one would break that.
    if np.any(np.tril(periods, -1)):
        raise ValueError(f"twisted shapes must list short dimensions first (e.g. 4x4x8, 4x8x8), got {dims}")
    return periods


class Torus(Topology):
    def __init__(self, name: str, dims: list[int] | tuple[int, ...], wraparound: list[bool] | tuple[bool, ...],
                 link_bandwidth: float, link_latency: float, twisted: bool = False, link_class: str = "ici"):
        self.dims = tuple(int(k) for k in dims)
        if len(wraparound) != len(self.dims):
            raise ValueError(f"wraparound has {len(wraparound)} entries for {len(self.dims)} dimensions")
        self.wrap = tuple(bool(w) and k > 1 for k, w in zip(self.dims, wraparound))
        self.twisted = bool(twisted)
        self.ndim = len(self.dims)
        self.periods = twisted_periods(self.dims) if twisted else np.diag(np.array(self.dims, dtype=np.int64))
        num_chips = int(np.prod(self.dims))
        self.coords = np.stack(np.unravel_index(np.arange(num_chips), self.dims), axis=1).astype(np.int64)
        self._strides = np.array([int(np.prod(self.dims[d + 1:])) for d in range(self.ndim)], dtype=np.int64)

        # Full link-id space: (chip, dim, direction); dims of size 1 and mesh edges have no link.
        full = num_chips * self.ndim * 2
        chip, dim, neg = np.unravel_index(np.arange(full), (num_chips, self.ndim, 2))
        step = np.where(neg == 1, -1, 1)
        target = self.coords[chip].copy()
        target[np.arange(full), dim] += step
        exists = np.array([self.dims[d] > 1 for d in range(self.ndim)])[dim]
        inside = (target[np.arange(full), dim] >= 0) & (target[np.arange(full), dim] < np.array(self.dims)[dim])
        exists &= inside | np.array(self.wrap)[dim]
        self._full_to_link = np.full(full, -1, dtype=np.int64)
        self._full_to_link[exists] = np.arange(int(exists.sum()))
        link_src = chip[exists]
        link_dst = self.index(self.reduce(target[exists]))
        labels = [("(" + ",".join(map(str, c)) + ")") if self.ndim > 1 else str(c[0]) for c in self.coords.tolist()]
        names = [f"{'+-'[n]}{AXIS_NAMES[d]}" for d, n in zip(dim[exists], neg[exists])]
        super().__init__(name, num_chips, labels, link_src, link_dst,
                         np.full(len(link_src), float(link_bandwidth)), np.full(len(link_src), float(link_latency)),
                         np.array([f"{link_class}{n}" for n in names]))
        self.hop_latency = float(link_latency)

    # ---- geometry -------------------------------------------------------
    def by_direction(self, link_values: np.ndarray) -> np.ndarray:
        """Per-link values laid out as (chip, dimension, + / −); NaN where a chip has no such link."""
        full = np.full(self._full_to_link.shape, np.nan)
        present = self._full_to_link >= 0
        full[present] = np.asarray(link_values, dtype=np.float64)[self._full_to_link[present]]
        return full.reshape(self.num_chips, self.ndim, 2)

    def index(self, coords: np.ndarray) -> np.ndarray:
        return coords @ self._strides

    def reduce(self, coords: np.ndarray) -> np.ndarray:
        """Bring grid points back into the box by subtracting periods."""
        coords = np.array(coords, dtype=np.int64, copy=True)
        for d in range(self.ndim):
            if self.wrap[d]:
                q = np.floor_divide(coords[:, d], self.dims[d])
                coords -= q[:, None] * self.periods[d]
        return coords

    def link_id(self, chips: np.ndarray, dim: int, negative: bool) -> np.ndarray:
        return self._full_to_link[(chips * self.ndim + dim) * 2 + int(negative)]

    @cached_property
    def _rings(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per dimension: (ring_nodes [rings × L], ring_of[chip], pos_of[chip]).

        A ring is the cycle a chip walks along +e_d (a line for mesh dims).
        Twisted dimensions give rings longer than k_d (helices).
        """
        rings = []
        grid = np.arange(self.num_chips).reshape(self.dims)
        for d in range(self.ndim):
            if self.twisted and self.wrap[d]:
                step = np.zeros(self.ndim, dtype=np.int64)
                step[d] = 1
                nxt = self.index(self.reduce(self.coords + step))
                orbit = [np.arange(self.num_chips)]
                while True:
                    cand = nxt[orbit[-1]]
                    if cand[0] == 0:
                        break
                    orbit.append(cand)
                orbit = np.stack(orbit, axis=1)  # [chip, j] = chip + j*e_d
                reps = np.unique(orbit.min(axis=1))
                ring_nodes = orbit[reps]
            else:
                ring_nodes = np.moveaxis(grid, d, -1).reshape(-1, self.dims[d])
            ring_of = np.empty(self.num_chips, dtype=np.int64)
            pos_of = np.empty(self.num_chips, dtype=np.int64)
            ring_of[ring_nodes] = np.arange(ring_nodes.shape[0])[:, None]
            pos_of[ring_nodes] = np.arange(ring_nodes.shape[1])[None, :]
            rings.append((ring_nodes, ring_of, pos_of))
        return rings

    @cached_property
    def _twisted_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """For every group element δ (a chip id): its shortest vectors and shares."""
        deltas = self.coords
        shifts = np.array(list(itertools.product(range(-2, 3), repeat=self.ndim)), dtype=np.int64) @ self.periods
        cand = deltas[:, None, :] + shifts[None, :, :]
        hops = np.abs(cand).sum(axis=2)
        best = hops == hops.min(axis=1, keepdims=True)
        width = int(best.sum(axis=1).max())
        order = np.argsort(~best, axis=1, kind="stable")[:, :width]
        vectors = np.take_along_axis(cand, order[:, :, None], axis=1)
        chosen = np.take_along_axis(best, order, axis=1)
        shares = chosen / chosen.sum(axis=1, keepdims=True)
        return vectors, shares

    def minimal_vectors(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shortest hop vectors (F×J×D) and their shares (F×J, rows sum to 1)."""
        raw = self.coords[dst] - self.coords[src]
        if self.twisted:
            vectors, shares = self._twisted_vectors
            delta = self.index(self.reduce(raw))
            return vectors[delta], shares[delta]
        per_dim = []
        for d in range(self.ndim):
            k = self.dims[d]
            if not self.wrap[d]:
                per_dim.append((raw[:, d:d + 1], np.ones((len(raw), 1))))
                continue
            fwd = np.mod(raw[:, d], k)
            back = fwd - k
            tie = 2 * fwd == k
            first = np.where(2 * fwd <= k, fwd, back)
            per_dim.append((np.stack([first, back], axis=1), np.stack([np.where(tie, 0.5, 1.0), np.where(tie, 0.5, 0.0)], axis=1)))
        vec = per_dim[0][0][:, :, None]
        share = per_dim[0][1]
        for options, weights in per_dim[1:]:
            vec = np.concatenate([np.repeat(vec, options.shape[1], axis=1),
                                  np.tile(options, (1, vec.shape[1]))[:, :, None]], axis=2)
            share = (share[:, :, None] * weights[:, None, :]).reshape(len(raw), -1)
        return vec, share

    def hops(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        vectors, shares = self.minimal_vectors(src, dst)
        return np.abs(vectors[:, 0, :]).sum(axis=1)

    # ---- routing: flow by flow ------------------------------------------
    def _segments(self, src: np.ndarray, dst: np.ndarray):
        """Yield (dim, flow row, start chip, signed hops, share) per route segment."""
        vectors, shares = self.minimal_vectors(src, dst)
        rows, alt = np.nonzero(shares)
        vec = vectors[rows, alt]
        share = shares[rows, alt]
        position = self.coords[src[rows]]
        for d in range(self.ndim):
            hops = vec[:, d]
            moving = hops != 0
            start = self.index(position)
            yield d, rows[moving], start[moving], hops[moving], share[moving]
            position = position.copy()
            position[:, d] += hops
            position = self.reduce(position)

    def _segment_loads(self, src, dst, nbytes) -> np.ndarray:
        loads = np.zeros(self.num_links)
        for d, rows, start, hops, share in self._segments(src, dst):
            ring_nodes, ring_of, pos_of = self._rings[d]
            n_rings, length = ring_nodes.shape
            weight = share * nbytes[rows]
            ring, pos, count = ring_of[start], pos_of[start], np.abs(hops)
            for negative in (False, True):
                sel = hops < 0 if negative else hops > 0
                lo = (pos[sel] - count[sel] + 1) % length if negative else pos[sel]
                per_pos = _circular_interval_sum(ring[sel], lo, count[sel], weight[sel], n_rings, length)
                ids = self.link_id(ring_nodes.ravel(), d, negative)
                present = ids >= 0  # each (chip, dim, direction) is one link: ids are unique, so += is exact
                loads[ids[present]] += per_pos.ravel()[present]
        return loads

    def incidence(self, src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        rows_all, cols_all, data_all = [], [], []
        for d, rows, start, hops, share in self._segments(src, dst):
            ring_nodes, ring_of, pos_of = self._rings[d]
            length = ring_nodes.shape[1]
            count = np.abs(hops)
            rep = np.repeat(np.arange(len(rows)), count)
            step = np.arange(len(rep)) - np.repeat(np.cumsum(count) - count, count)
            sign = np.sign(hops)[rep]
            positions = (pos_of[start][rep] + sign * step) % length
            chips = ring_nodes[ring_of[start][rep], positions]
            links = np.where(sign > 0, self.link_id(chips, d, False), self.link_id(chips, d, True))
            if np.any(links < 0):
                raise AssertionError("route uses a link that does not exist")
            rows_all.append(rows[rep])
            cols_all.append(links)
            data_all.append(share[rep])
        if not rows_all:
            return sp.csr_matrix((len(src), self.num_links))
        return sp.csr_matrix((np.concatenate(data_all), (np.concatenate(rows_all), np.concatenate(cols_all))),
                             shape=(len(src), self.num_links))

    def path_latency(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        return self.hops(np.asarray(src), np.asarray(dst)) * self.hop_latency

    # ---- routing: whole dense matrices ------------------------------------
    def link_loads(self, traffic: Traffic) -> np.ndarray:
        if traffic.copies is not None and not self.twisted and self.num_chips >= self.LARGE:
            families = self._copy_translations(traffic.copies)
            if families is not None:
                return sum(self._translated_sum(self._dense_loads(factors=base), shifts) for base, shifts in families)
        if traffic.factors is not None and not self.twisted:
            return self._dense_loads(factors=traffic.factors)
        if traffic.is_dense and not self.twisted:
            return self._dense_loads(traffic.matrix)
        if traffic.is_dense:
            return self._chunked_flow_loads(traffic.matrix)
        return self._segment_loads(*traffic.flows())

    def _chunked_flow_loads(self, matrix: np.ndarray, rows_per_chunk: int = 256) -> np.ndarray:
        loads = np.zeros(self.num_links)
        n = self.num_chips
        for lo in range(0, n, rows_per_chunk):
            block = matrix[lo:lo + rows_per_chunk]
            src, dst = np.nonzero(block)
            keep = (src + lo) != dst
            src, dst = src[keep], dst[keep]
            loads += self._segment_loads(src + lo, dst, block[src, dst])
        return loads

    @cached_property
    def _ring_tensors(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per dimension, C+[a, b, x] and C-[a, b, x]: share of a→b on the +/- link at x."""
        tensors = []
        for d in range(self.ndim):
            k = self.dims[d]
            a, b = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
            a, b = a.ravel(), b.ravel()
            coords_a = np.zeros((k * k, self.ndim), dtype=np.int64)
            coords_b = np.zeros((k * k, self.ndim), dtype=np.int64)
            coords_a[:, d], coords_b[:, d] = a, b
            plus = np.zeros((k * k, k))
            minus = np.zeros((k * k, k))
            sub = Torus("ring", [k], [self.wrap[d]], 1.0, 0.0)
            inc = sub.incidence(a, b).toarray()
            for x in range(k):
                for negative, target in ((False, plus), (True, minus)):
                    lid = sub.link_id(np.array([x]), 0, negative)[0]
                    if lid >= 0:
                        target[:, x] = inc[:, lid]
            tensors.append((plus.reshape(k, k, k), minus.reshape(k, k, k)))
        return tensors

    def _dense_loads(self, matrix: np.ndarray | None = None, factors: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Link loads of an N×N matrix, or of ``left @ right`` without forming it.

        With factors, the partial sum per line is a product of partial sums of
        the factors: O(N·k·rank) per dimension instead of O(N²).
        """
        if factors is not None:
            box = self._box_of(*factors)
            if box is not None:
                return self._box_loads(*factors, box)
        D = self.ndim
        full = matrix.reshape(self.dims + self.dims) if matrix is not None else None
        letters = "ijk"[:D]
        loads = np.zeros(self.num_links)
        chips = np.arange(self.num_chips)
        for d in range(D):
            if self.dims[d] == 1:
                continue
            # Phase d runs on the line fixed by t_e (e<d) and s_e (e>d), from s_d to t_d.
            summed = tuple(e for e in range(D) if e < d) + tuple(D + e for e in range(D) if e > d)
            if full is not None:
                per_line = full.sum(axis=summed) if summed else full
            else:
                left, right = factors
                rank = left.shape[1]
                # Sum sources over the dimensions before d, destinations over those after d.
                u = left.reshape(self.dims + (rank,)).sum(axis=tuple(e for e in range(D) if e < d))
                v = right.reshape((rank,) + self.dims).sum(axis=tuple(1 + e for e in range(D) if e > d))
                per_line = np.tensordot(u, v, axes=([-1], [0]))
            spec_line = "a" + letters[d + 1:] + letters[:d] + "b"
            for negative, tensor in zip((False, True), self._ring_tensors[d]):
                per_chip = np.einsum(f"{spec_line},ab{letters[d]}->{letters}", per_line, tensor, optimize=True)
                ids = self.link_id(chips, d, negative)
                present = ids >= 0
                loads[ids[present]] += per_chip.ravel()[present]
        return loads

    def _box_of(self, left: np.ndarray, right: np.ndarray) -> list[np.ndarray] | None:
        """Per dimension, the coordinates of the chips that send or receive, when their product is a box smaller
        than the torus (one expert group's chips: a few planes of it); else None."""
        busy = np.flatnonzero(left.any(axis=1) | right.any(axis=0))
        if not len(busy):
            return None
        box = [np.unique(self.coords[busy, d]) for d in range(self.ndim)]
        small = np.prod([len(b) for b in box]) * 16 <= self.num_chips and self.num_chips >= self.LARGE
        return box if small else None

    def _box_loads(self, left: np.ndarray, right: np.ndarray, box: list[np.ndarray]) -> np.ndarray:
        """:meth:`_dense_loads` of ``left @ right`` whose chips all lie in `box` (coordinates per dimension): the
        same sums over the box's lines only. Along the dimension being routed a line is the whole ring (a route
        passes coordinates outside the box), across it only the box's coordinates: O(box · k · rank)."""
        D, rank = self.ndim, left.shape[1]
        letters = "ijk"[:D]
        inside = np.ix_(*box)
        left_box = left.reshape(self.dims + (rank,))[inside]  # (|box_0|, ..., rank)
        right_box = np.moveaxis(right.reshape((rank,) + self.dims), 0, -1)[inside]  # (|box_0|, ..., rank)
        loads = np.zeros(self.num_links)
        for d in range(D):
            if self.dims[d] == 1:
                continue
            u = left_box.sum(axis=tuple(e for e in range(D) if e < d))  # sources summed over the dims before d
            v = np.moveaxis(right_box.sum(axis=tuple(e for e in range(D) if e > d)), -1, 0)  # destinations after d
            per_line = np.tensordot(u, v, axes=([-1], [0]))
            spec_line = "a" + letters[d + 1:] + letters[:d] + "b"
            lines = [np.arange(k) if e == d else box[e] for e, k in enumerate(self.dims)]
            chips = self.index(np.stack(np.meshgrid(*lines, indexing="ij"), axis=-1).reshape(-1, D))
            for negative, tensor in zip((False, True), self._ring_tensors[d]):
                tensor = tensor[np.ix_(box[d], box[d], np.arange(self.dims[d]))]
                per_chip = np.einsum(f"{spec_line},ab{letters[d]}->{letters}", per_line, tensor, optimize=True)
                ids = self.link_id(chips, d, negative)
                present = ids >= 0
                loads[ids[present]] += per_chip.ravel()[present]  # (one link per chip: no id twice)
        return loads

    @cached_property
    def _hop_matrix(self) -> np.ndarray:
        """Hops between every chip pair (uint16, N×N: a route of at most 65,535 hops), cached per topology."""
        n = self.num_chips
        if not self.twisted:
            # Regular: the sum over dimensions of ring distances, broadcast over the 2D-dim grid.
            hops = np.zeros(self.dims + self.dims, dtype=np.uint16)
            for d, k in enumerate(self.dims):
                a = np.arange(k)
                ring = self._ring_gap(a[:, None], a[None, :], d)
                shape = [1] * (2 * self.ndim)
                shape[d], shape[self.ndim + d] = k, k
                hops += ring.astype(np.uint16).reshape(shape)
            return hops.reshape(n, n)
        hops_by_delta = np.abs(self._twisted_vectors[0][:, 0, :]).sum(axis=1).astype(np.uint16)
        hops = np.empty((n, n), dtype=np.uint16)
        for lo in range(0, n, 256):
            src = np.repeat(np.arange(lo, min(lo + 256, n)), n)
            dst = np.tile(np.arange(n), len(src) // n)
            hops[lo:lo + 256] = hops_by_delta[self.index(self.reduce(self.coords[dst] - self.coords[src]))].reshape(-1, n)
        return hops

    def max_path_latency(self, traffic: Traffic, link_bytes: np.ndarray | None = None) -> float:
        if traffic.copies is not None and not self.twisted and self.num_chips >= self.LARGE:
            families = self._copy_translations(traffic.copies)
            if families is not None:  # every copy's routes are its family's first copy's, moved: so is the longest
                return float(max(self._factored_max_hops(*base) for base, _ in families)) * self.hop_latency
        if traffic.factors is not None:
            return float(self._factored_max_hops(*traffic.factors)) * self.hop_latency
        if traffic.is_dense:
            longest = np.max(self._hop_matrix, where=traffic.matrix > 0, initial=0)
            return float(longest) * self.hop_latency
        return super().max_path_latency(traffic)

    # ---- copies of one pattern: compute one copy, move it to the others -------------------------------------------
    MAX_LOOSE_TRANSLATIONS = 1024  # a family's shifts summed one by one when not a product of per-axis sets
    # Below this many chips the whole torus's arrays cost less than moving one copy's loads or restricting a
    # route to a box (measured: 0.23 ms whole, 0.36 ms boxed, at 512 chips; 1.18 against 0.41 ms at 4,096).
    LARGE = 2048

    def _copy_translations(self, copies: CopyPattern) -> list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray]] | None:
        """The copies as families of translations: copies with the same classes at the same positions whose chips
        are the family's first copy's, every one shifted by one vector of the torus. Per family, the first copy's
        traffic as factors (rank: the classes) and the shifts (members × dimensions); None when the copies are not
        so made. A regular torus routes by coordinate differences only, so a moved copy's routes, and their link
        loads, are the first copy's moved. Along a dimension without wraparound a shift must hold without
        wrapping (then the routes stay between the copy's own chips)."""
        key = (id(copies.chip_of), id(copies.class_of))
        cached = self.__dict__.setdefault("_translation_cache", {})
        if key not in cached or cached[key][0] is not copies.chip_of or cached[key][1] is not copies.class_of:
            cached.clear()  # one layout's grid at a time: every layer and micro-batch of a step reuses it
            cached[key] = (copies.chip_of, copies.class_of, self._families_of(copies.chip_of, copies.class_of))
        families = cached[key][2]
        if families is None:
            return None
        out = []
        for first, shifts in families:
            classes = copies.weights.shape[0]
            left = np.zeros((self.num_chips, classes))
            left[copies.chip_of[first], copies.class_of[first]] = 1.0
            right = np.zeros((classes, self.num_chips))
            right[:, copies.chip_of[first]] = copies.weights
            out.append((((right.T, left.T) if copies.reverse else (left, right)), shifts))
        return out

    def _families_of(self, chip_of: np.ndarray, class_of: np.ndarray) -> list[tuple[int, np.ndarray]] | None:
        """(first copy, shifts of the family's copies from it) per family of copies with the same class row."""
        _, first_of, family = np.unique(class_of, axis=0, return_index=True, return_inverse=True)
        families = []
        for f, first in enumerate(first_of):
            members = np.flatnonzero(family.ravel() == f)
            delta = self.coords[chip_of[members]] - self.coords[chip_of[first]][None]  # (members, P, D)
            for d, k in enumerate(self.dims):
                if self.wrap[d]:
                    delta[..., d] %= k
            if not (delta == delta[:, :1, :]).all():
                return None
            shifts = delta[:, 0, :]
            if not self._separable(shifts) and len(shifts) > self.MAX_LOOSE_TRANSLATIONS:
                return None
            families.append((int(first), shifts))
        return families

    @staticmethod
    def _separable(shifts: np.ndarray) -> bool:
        """The shifts are every combination of per-dimension values (copies tiling the torus in blocks)."""
        per_axis = [np.unique(shifts[:, d]) for d in range(shifts.shape[1])]
        return len(np.unique(shifts, axis=0)) == len(shifts) == int(np.prod([len(u) for u in per_axis]))

    def _translated_sum(self, loads: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """The sum of `loads` moved by every shift: per dimension one roll per distinct value when the shifts
        are a product of per-dimension sets, else one roll per shift."""
        grid = np.nan_to_num(self.by_direction(loads)).reshape(*self.dims, self.ndim, 2)
        axes = tuple(range(self.ndim))
        per_axis = [np.unique(shifts[:, d]) for d in axes]
        lattice = np.stack(np.meshgrid(*per_axis, indexing="ij"), axis=-1).reshape(-1, self.ndim)
        span = 2 * np.asarray(self.dims)  # a shift along a mesh dimension may be negative: code it from -k
        weights = np.cumprod(np.concatenate([[1], span[:-1]]))
        code = lambda s: (s + np.asarray(self.dims)) @ weights  # noqa: E731
        missing = lattice[~np.isin(code(lattice), code(shifts))]
        if len(missing) < len(shifts):
            # The shifts fill most of the product of their per-axis values (a family that all but one copy is in):
            # the product's sum, per axis, less the few shifts it has beyond the family.
            whole = grid
            for d, values in zip(axes, per_axis):
                if len(values) > 1 or values[0] != 0:
                    whole = sum(np.roll(whole, int(v), axis=d) for v in values)
            grid = whole - sum((np.roll(grid, tuple(int(v) for v in m), axis=axes) for m in missing), np.zeros_like(grid))
            grid[grid < 1e-12 * grid.max(initial=0.0)] = 0.0  # the residue of bytes taken off exactly: none
        else:
            grid = sum(np.roll(grid, tuple(int(v) for v in shift), axis=axes) for shift in shifts)
        out = np.zeros(self.num_links)
        present = self._full_to_link >= 0
        out[self._full_to_link[present]] = grid.reshape(-1)[present]
        return out

    def _factored_max_hops(self, left: np.ndarray, right: np.ndarray) -> int:
        """Longest route of ``left @ right``: over its rank-one terms r, from the chips with ``left[:, r] > 0`` to
        those with ``right[r] > 0``. On a regular torus every term whose two chip sets are boxes (an expert group's
        sources and destinations) is measured at once from per-dimension coordinate sets, so the cost is one pass
        over the factors, not one per term; the other terms (and a twisted torus) go one by one."""
        sends, gets = left > 0, right > 0
        terms = np.flatnonzero(sends.any(axis=0) & gets.any(axis=1))
        if not len(terms):
            return 0
        longest, rest = 0, terms
        if not self.twisted:
            boxes = np.zeros(len(terms), dtype=bool)
            chunk = max(1, 2**23 // (4 * self.num_chips))  # terms per pass: 32 MB of float32 chip masks at most
            rings, onehots = self._coordinate_tables
            for lo in range(0, len(terms), chunk):
                part = terms[lo:lo + chunk]
                src, dst = sends[:, part].astype(np.float32), gets[part].astype(np.float32)  # chips × t, t × chips
                src_box, dst_box, gaps = np.ones(len(part)), np.ones(len(part)), np.zeros(len(part), dtype=np.int64)
                for ring, onehot in zip(rings, onehots):
                    a, b = (onehot.T @ src).T > 0, (dst @ onehot) > 0  # t × k: the coordinates used along d
                    src_box *= a.sum(axis=1)
                    dst_box *= b.sum(axis=1)
                    farthest = np.where(b[:, None, :], ring[None], -1).max(axis=2)  # t × k: from each coordinate
                    gaps += np.where(a, farthest, -1).max(axis=1)
                box = (src_box == src.sum(axis=0)) & (dst_box == dst.sum(axis=1))  # every coordinate combination used
                boxes[lo:lo + chunk] = box
                longest = max(longest, int(gaps[box].max(initial=0)))
            rest = terms[~boxes]
        return max([longest, *(self._max_hops_between(sends[:, r], gets[r]) for r in rest)])

    @cached_property
    def _coordinate_tables(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per dimension, the ring distances between coordinates (k × k) and each chip's coordinate one-hot
        (chips × k, float32): what :meth:`_factored_max_hops` reads every phase (50 MB at 65,536 chips: made once)."""
        rings = [self._ring_gap(np.arange(k)[:, None], np.arange(k)[None, :], d).astype(np.int16)
                 for d, k in enumerate(self.dims)]
        onehots = [np.eye(k, dtype=np.float32)[self.coords[:, d]] for d, k in enumerate(self.dims)]
        return rings, onehots

    def _max_hops_between(self, sources: np.ndarray, destinations: np.ndarray) -> int:
        """Longest route from any chip in `sources` to any in `destinations` (boolean masks), cached by the masks."""
        if not sources.any() or not destinations.any():
            return 0
        cache = self.__dict__.setdefault("_max_hops_cache", {})
        key = (np.packbits(sources).tobytes(), np.packbits(destinations).tobytes())
        if key not in cache:
            if len(cache) >= 4096:  # a sweep over many traffic shapes: keep memory bounded
                cache.clear()
            cache[key] = self._longest_route(np.flatnonzero(sources), np.flatnonzero(destinations))
        return cache[key]

    def _longest_route(self, src: np.ndarray, dst: np.ndarray) -> int:
        """Most hops from a chip of `src` to one of `dst` (chip ids). On a regular torus, where both are boxes of
        the torus (products of per-dimension coordinate sets: whole axes, slabs, an all-to-all group), the longest
        route is the sum over dimensions of the farthest coordinate pair, found without any chip-pair array;
        otherwise chip pairs are measured in blocks, or read from the hop matrix of a small or twisted torus."""
        if not self.twisted:
            per_dim = [(np.unique(self.coords[src, d]), np.unique(self.coords[dst, d])) for d in range(self.ndim)]
            if all(len(ids) == np.prod([len(sets[i]) for sets in per_dim]) for i, ids in enumerate((src, dst))):
                return int(sum(self._ring_gap(a[:, None], b[None, :], d).max() for d, (a, b) in enumerate(per_dim)))
            longest, block = 0, max(1, 2**22 // max(len(dst), 1))
            for lo in range(0, len(src), block):
                s = self.coords[src[lo:lo + block]]
                hops = sum(self._ring_gap(s[:, None, d], self.coords[dst][None, :, d], d) for d in range(self.ndim))
                longest = max(longest, int(hops.max()))
            return longest
        check_allocation(2.0 * self.num_chips**2, f"the hop matrix of a {self.num_chips:,}-chip twisted torus", self.name,
                         "topology", "use an untwisted torus, or fewer chips")
        return int(self._hop_matrix[np.ix_(src, dst)].max())

    def _ring_gap(self, a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
        """Hops between coordinates `a` and `b` along dimension d (the shorter way round where it wraps)."""
        gap = np.abs(a - b)
        return np.minimum(gap, self.dims[d] - gap) if self.wrap[d] else gap

    def bisection_links(self) -> int:
        """Directed links crossing the narrowest cut that halves a regular torus.

        A cut across dimension d (length k_d, even) is crossed by
        2 × N/k_d links per direction with wraparound, N/k_d without.
        """
        if self.twisted:
            raise NotImplementedError("bisection of twisted tori has no simple closed form here")
        best = None
        for d, k in enumerate(self.dims):
            if k < 2:
                continue
            per_direction = (2 if self.wrap[d] else 1) * (self.num_chips // k)
            best = per_direction if best is None else min(best, per_direction)
        return int(best)

    def describe(self) -> dict:
        info = super().describe()
        info.update(dims="x".join(map(str, self.dims)), wraparound=list(self.wrap), twisted=self.twisted)
        return info


def _circular_interval_sum(ring, lo, count, weight, n_rings, length) -> np.ndarray:
    """Add `weight` over positions [lo, lo+count) (mod length) of each ring.

    Difference arrays and one cumulative sum: O(intervals + rings × length).
    """
    hi = lo + count
    width = length + 1
    base = ring * width
    wrapped = hi > length
    idx = np.concatenate([base + lo, base + np.minimum(hi, length), base[wrapped], base[wrapped] + hi[wrapped] - length])
    val = np.concatenate([weight, -weight, weight[wrapped], -weight[wrapped]])
    diff = np.bincount(idx, weights=val, minlength=n_rings * width).reshape(n_rings, width)
    return np.cumsum(diff, axis=1)[:, :length]
