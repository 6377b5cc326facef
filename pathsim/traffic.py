"""Traffic: the bytes one communication phase moves between chips.

A phase is either a dense N×N matrix (all-to-all; ``matrix[s, d]`` bytes from
chip s to chip d) or a list of flows (ring steps: a few entries per chip). Each
form converts lazily to the other, so routers take whichever is cheaper. Bytes a
chip sends to itself are a local copy and never reach the network.
"""

from __future__ import annotations

import numpy as np


class Traffic:
    """Bytes between chips for one phase. Immutable once built."""

    def __init__(self, num_chips: int, *, matrix: np.ndarray | None = None,
                 src: np.ndarray | None = None, dst: np.ndarray | None = None,
                 nbytes: np.ndarray | None = None):
        if num_chips < 1:
            raise ValueError(f"num_chips must be positive, got {num_chips}")
        self.num_chips = int(num_chips)
        self._matrix: np.ndarray | None = None
        self._flows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if matrix is not None:
            matrix = np.asarray(matrix, dtype=np.float64)
            if matrix.shape != (num_chips, num_chips):
                raise ValueError(f"traffic matrix must be {num_chips}x{num_chips}, got {matrix.shape}")
            _check_bytes(matrix)
            self._matrix = matrix
        else:
            if src is None or dst is None or nbytes is None:
                raise ValueError("give either matrix= or all of src=, dst=, nbytes=")
            src = np.asarray(src, dtype=np.int64).ravel()
            dst = np.asarray(dst, dtype=np.int64).ravel()
            nbytes = np.asarray(nbytes, dtype=np.float64).ravel()
            if not (len(src) == len(dst) == len(nbytes)):
                raise ValueError("src, dst and nbytes must have the same length")
            for name, ids in (("src", src), ("dst", dst)):
                if len(ids) and (ids.min() < 0 or ids.max() >= num_chips):
                    raise ValueError(f"{name} holds chip ids outside 0..{num_chips - 1}")
            _check_bytes(nbytes)
            keep = (src != dst) & (nbytes > 0)
            self._flows = (src[keep], dst[keep], nbytes[keep])

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Traffic":
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"traffic matrix must be square, got shape {matrix.shape}")
        return cls(matrix.shape[0], matrix=matrix)

    @classmethod
    def from_flows(cls, num_chips: int, src, dst, nbytes) -> "Traffic":
        return cls(num_chips, src=src, dst=dst, nbytes=nbytes)

    @property
    def is_dense(self) -> bool:
        return self._matrix is not None

    @property
    def matrix(self) -> np.ndarray:
        """Dense N×N bytes, with the diagonal (local copies) as given."""
        if self._matrix is None:
            src, dst, nbytes = self._flows
            flat = np.bincount(src * self.num_chips + dst, weights=nbytes, minlength=self.num_chips**2)
            self._matrix = flat.reshape(self.num_chips, self.num_chips)
        return self._matrix

    def flows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, nbytes) of every network flow: no self-traffic, no zeros."""
        if self._flows is None:
            m = self._matrix
            src, dst = np.nonzero(m)
            keep = src != dst
            src, dst = src[keep], dst[keep]
            self._flows = (src.astype(np.int64), dst.astype(np.int64), m[src, dst])
        return self._flows

    @property
    def network_bytes(self) -> float:
        """Bytes that cross the network (self-traffic excluded)."""
        if self._flows is not None:
            return float(self._flows[2].sum())
        return float(self._matrix.sum() - np.trace(self._matrix))

    def sent_per_chip(self) -> np.ndarray:
        src, _, nbytes = self.flows()
        return np.bincount(src, weights=nbytes, minlength=self.num_chips)

    def received_per_chip(self) -> np.ndarray:
        _, dst, nbytes = self.flows()
        return np.bincount(dst, weights=nbytes, minlength=self.num_chips)

    def __add__(self, other: "Traffic") -> "Traffic":
        """Two phases that run at the same time share the network."""
        if other.num_chips != self.num_chips:
            raise ValueError("cannot add traffic over different numbers of chips")
        if self.is_dense and other.is_dense:
            return Traffic(self.num_chips, matrix=self.matrix + other.matrix)
        a, b = self.flows(), other.flows()
        return Traffic(self.num_chips, src=np.concatenate([a[0], b[0]]),
                       dst=np.concatenate([a[1], b[1]]), nbytes=np.concatenate([a[2], b[2]]))

    def __repr__(self) -> str:
        form = "dense" if self.is_dense else f"{len(self._flows[0])} flows"
        return f"Traffic({self.num_chips} chips, {form}, {self.network_bytes:.4g} network bytes)"


def _check_bytes(values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError("traffic bytes must be finite")
    if values.size and values.min() < 0:
        raise ValueError("traffic bytes must not be negative")
