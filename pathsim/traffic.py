"""Traffic: the bytes one communication phase moves between chips.

A phase is a dense N×N matrix (all-to-all; ``matrix[s, d]`` bytes from chip s
to chip d), a list of flows (ring steps: a few entries per chip), or a low-rank
product ``left @ right`` of non-negative factors (MoE dispatch: every chip of a
class sends its tokens in the same proportions, so the matrix has rank
classes × expert groups, and a router that understands factors never builds
the N×N matrix), or copies of one pattern (an MoE dispatch again: G copies of
the expert set, each an all-to-all among its P ranks whose rows depend only on
the source's class, so O(G·P) numbers describe what the factors hold in
O(N·G·classes)). Each form converts lazily to the others, so routers take
whichever is cheaper. Bytes a chip sends to itself are a local copy and never
reach the network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class CopyPattern:
    """G copies of one all-to-all pattern among P ranks: the rank at position p of copy g sits on chip
    ``chip_of[g, p]``, is of class ``class_of[g, p]``, and sends ``weights[class, q]`` bytes to the rank at
    position q of its own copy (``reverse``: the same bytes the other way, q to p — a combine after a dispatch)."""

    chip_of: np.ndarray  # (G, P) chip ids
    class_of: np.ndarray  # (G, P) source class of each rank
    weights: np.ndarray  # (classes, P) bytes a source of each class sends to each position
    reverse: bool = False

    def factors(self, num_chips: int) -> tuple[np.ndarray, np.ndarray]:
        """``left @ right``, rank G × classes: left[chip, (g, c)] = 1 where that chip is of class c in copy g."""
        copies, classes = self.chip_of.shape[0], self.weights.shape[0]
        term = np.arange(copies)[:, None] * classes + self.class_of  # (G, P): each rank's term as a source
        left = np.zeros((num_chips, copies * classes))
        left[self.chip_of, term] = 1.0
        right = np.zeros((copies * classes, num_chips))
        rows = np.arange(copies)[:, None, None] * classes + np.arange(classes)[None, :, None]  # (G, C, 1)
        right[rows, self.chip_of[:, None, :]] = self.weights[None, :, :]
        return (right.T, left.T) if self.reverse else (left, right)

    def sent_and_received(self, num_chips: int) -> tuple[np.ndarray, np.ndarray]:
        """Network bytes each chip sends and receives (a rank's bytes to its own position stay local)."""
        copies, positions = self.chip_of.shape
        classes = self.weights.shape[0]
        own = self.weights[self.class_of, np.arange(positions)[None, :]]  # (G, P): a rank's bytes to itself
        out = self.weights.sum(axis=1)[self.class_of] - own  # (G, P): each source's network bytes
        term = (np.arange(copies)[:, None] * classes + self.class_of).ravel()
        count = np.bincount(term, minlength=copies * classes).reshape(copies, classes)  # sources per class and copy
        into = count @ self.weights - own  # (G, P): what each position receives from the other ranks of its copy
        sent = np.bincount(self.chip_of.ravel(), weights=out.ravel(), minlength=num_chips)
        received = np.bincount(self.chip_of.ravel(), weights=into.ravel(), minlength=num_chips)
        return (received, sent) if self.reverse else (sent, received)


class Traffic:
    """Bytes between chips for one phase. Immutable once built."""

    def __init__(self, num_chips: int, *, matrix: np.ndarray | None = None,
                 src: np.ndarray | None = None, dst: np.ndarray | None = None,
                 nbytes: np.ndarray | None = None, factors: tuple[np.ndarray, np.ndarray] | None = None,
                 copies: CopyPattern | None = None):
        if num_chips < 1:
            raise ValueError(f"num_chips must be positive, got {num_chips}")
        self.num_chips = int(num_chips)
        self._matrix: np.ndarray | None = None
        self._flows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._factors: tuple[np.ndarray, np.ndarray] | None = None
        self.copies: CopyPattern | None = None
        if copies is not None:
            chip_of, class_of = np.asarray(copies.chip_of, dtype=np.int64), np.asarray(copies.class_of, dtype=np.int64)
            weights = np.asarray(copies.weights, dtype=np.float64)
            if (chip_of.ndim != 2 or class_of.shape != chip_of.shape or weights.ndim != 2
                    or weights.shape[1] != chip_of.shape[1]):
                raise ValueError(f"copies: chip_of and class_of must be (G, P) and weights (classes, P), got "
                                 f"{chip_of.shape}, {class_of.shape} and {weights.shape}")
            if chip_of.size and (chip_of.min() < 0 or chip_of.max() >= num_chips):
                raise ValueError(f"copies: chip ids outside 0..{num_chips - 1}")
            if class_of.size and (class_of.min() < 0 or class_of.max() >= weights.shape[0]):
                raise ValueError("copies: a class beyond the rows of weights")
            _check_bytes(weights)
            self.copies = CopyPattern(chip_of, class_of, weights, bool(copies.reverse))
        elif factors is not None:
            left, right = (np.asarray(f, dtype=np.float64) for f in factors)
            if left.ndim != 2 or right.ndim != 2 or left.shape[0] != num_chips or right.shape != (left.shape[1], num_chips):
                raise ValueError(f"factors must be ({num_chips}×r) and (r×{num_chips}), got {left.shape} and {right.shape}")
            _check_bytes(left)
            _check_bytes(right)
            self._factors = (left, right)
        elif matrix is not None:
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
    def from_factors(cls, left: np.ndarray, right: np.ndarray) -> "Traffic":
        """The traffic ``left @ right`` (N×r times r×N, both non-negative)."""
        return cls(np.shape(left)[0], factors=(left, right))

    @classmethod
    def _of_checked_factors(cls, left: np.ndarray, right: np.ndarray) -> "Traffic":
        """Factors made from factors already checked (scaled by a finite non-negative number, transposed,
        stacked): not scanned again, which at 32K chips is two passes over two N×r arrays per phase."""
        traffic = cls.__new__(cls)
        traffic.num_chips, traffic._matrix, traffic._flows, traffic._factors = left.shape[0], None, None, (left, right)
        traffic.copies = None
        return traffic

    @classmethod
    def from_copies(cls, num_chips: int, chip_of, class_of, weights, reverse: bool = False) -> "Traffic":
        """G copies of one pattern (see :class:`CopyPattern`): an MoE dispatch over G copies of the expert set."""
        return cls(num_chips, copies=CopyPattern(chip_of, class_of, weights, reverse))

    @property
    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(left, right)`` with ``left @ right`` the traffic, when it is held as factors or as copies (whose
        factors are built on first use: O(N × G × classes), which routers that understand copies never ask for)."""
        if self._factors is None and self.copies is not None:
            self._factors = self.copies.factors(self.num_chips)
        return self._factors

    @classmethod
    def from_flows(cls, num_chips: int, src, dst, nbytes) -> "Traffic":
        return cls(num_chips, src=src, dst=dst, nbytes=nbytes)

    @property
    def is_dense(self) -> bool:
        """True when the N×N matrix exists or is one product away (factors, copies)."""
        return self._matrix is not None or self._factors is not None or self.copies is not None

    @property
    def matrix(self) -> np.ndarray:
        """Dense N×N bytes, with the diagonal (local copies) as given."""
        if self._matrix is None and self.factors is not None:
            self._matrix = self.factors[0] @ self.factors[1]
        if self._matrix is None:
            src, dst, nbytes = self._flows
            flat = np.bincount(src * self.num_chips + dst, weights=nbytes, minlength=self.num_chips**2)
            self._matrix = flat.reshape(self.num_chips, self.num_chips)
        return self._matrix

    def flows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(src, dst, nbytes) of every network flow: no self-traffic, no zeros."""
        if self._flows is None:
            m = self.matrix
            src, dst = np.nonzero(m)
            keep = src != dst
            src, dst = src[keep], dst[keep]
            self._flows = (src.astype(np.int64), dst.astype(np.int64), m[src, dst])
        return self._flows

    def uniform_flows(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        """(src, dst, bytes of each) when the phase is held as flows that all carry the same bytes (a ring step),
        else None: such a phase is its chip pairs' pattern times one number."""
        if self._flows is None:  # (flows listed once are the phase, whatever form it came in)
            return None
        src, dst, nbytes = self._flows
        if not len(nbytes) or not (nbytes == nbytes[0]).all():
            return None
        return src, dst, float(nbytes[0])

    @property
    def network_bytes(self) -> float:
        """Bytes that cross the network (self-traffic excluded)."""
        if self._flows is not None:
            return float(self._flows[2].sum())
        if self.copies is not None:
            return float(self.copies.sent_and_received(self.num_chips)[0].sum())
        if self._matrix is None:
            left, right = self.factors
            return float(left.sum(axis=0) @ right.sum(axis=1) - self._factor_diagonal().sum())
        return float(self._matrix.sum() - np.trace(self._matrix))

    def _factor_diagonal(self) -> np.ndarray:
        left, right = self.factors
        return np.einsum("sr,rs->s", left, right)

    def sent_per_chip(self) -> np.ndarray:
        if self.copies is not None:
            return self.copies.sent_and_received(self.num_chips)[0]
        if self._flows is None and self._matrix is None:
            left, right = self.factors
            return left @ right.sum(axis=1) - self._factor_diagonal()
        src, _, nbytes = self.flows()
        return np.bincount(src, weights=nbytes, minlength=self.num_chips)

    def received_per_chip(self) -> np.ndarray:
        if self.copies is not None:
            return self.copies.sent_and_received(self.num_chips)[1]
        if self._flows is None and self._matrix is None:
            left, right = self.factors
            return left.sum(axis=0) @ right - self._factor_diagonal()
        _, dst, nbytes = self.flows()
        return np.bincount(dst, weights=nbytes, minlength=self.num_chips)

    def scaled(self, factor: float) -> "Traffic":
        """The same pattern with every byte count multiplied by `factor` (e.g. tokens → bytes)."""
        if self.copies is not None:
            with np.errstate(over="ignore"):  # an overflow is refused, as non-finite bytes, by the constructor
                weights = self.copies.weights * float(factor)
            return Traffic(self.num_chips, copies=replace(self.copies, weights=weights))
        if self.factors is not None and self._matrix is None:
            factor = float(factor)
            if not (factor >= 0 and np.isfinite(factor * float(self.factors[1].max(initial=0.0)))):
                raise ValueError(f"traffic bytes must be finite (scaling by {factor} overflows)")
            return Traffic._of_checked_factors(self.factors[0], self.factors[1] * factor)
        if self._matrix is not None:
            return Traffic(self.num_chips, matrix=self._matrix * factor)
        src, dst, nbytes = self._flows
        return Traffic(self.num_chips, src=src, dst=dst, nbytes=nbytes * factor)

    def transposed(self) -> "Traffic":
        """The reverse phase: every byte goes back from destination to source (a combine after a dispatch)."""
        if self.copies is not None:
            return Traffic(self.num_chips, copies=replace(self.copies, reverse=not self.copies.reverse))
        if self.factors is not None and self._matrix is None:
            left, right = self.factors
            return Traffic._of_checked_factors(right.T, left.T)
        if self._matrix is not None:
            return Traffic(self.num_chips, matrix=self._matrix.T)
        src, dst, nbytes = self._flows
        return Traffic(self.num_chips, src=dst, dst=src, nbytes=nbytes)

    def __add__(self, other: "Traffic") -> "Traffic":
        """Two phases that run at the same time share the network."""
        if other.num_chips != self.num_chips:
            raise ValueError("cannot add traffic over different numbers of chips")
        if self.factors is not None and other.factors is not None and self._matrix is None and other._matrix is None:
            return Traffic._of_checked_factors(np.hstack([self.factors[0], other.factors[0]]),
                                               np.vstack([self.factors[1], other.factors[1]]))
        if self.is_dense and other.is_dense:
            return Traffic(self.num_chips, matrix=self.matrix + other.matrix)
        a, b = self.flows(), other.flows()
        return Traffic(self.num_chips, src=np.concatenate([a[0], b[0]]),
                       dst=np.concatenate([a[1], b[1]]), nbytes=np.concatenate([a[2], b[2]]))

    def __repr__(self) -> str:
        form = (f"{self.copies.chip_of.shape[0]} copies of a {self.copies.chip_of.shape[1]}-rank pattern"
                if self.copies is not None else
                f"rank-{self._factors[0].shape[1]} factors" if self._factors is not None else
                "dense" if self._matrix is not None else f"{len(self._flows[0])} flows")
        return f"Traffic({self.num_chips} chips, {form}, {self.network_bytes:.4g} network bytes)"


def _check_bytes(values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError("traffic bytes must be finite")
    if values.size and values.min() < 0:
        raise ValueError("traffic bytes must not be negative")
