"""FLOPs and HBM bytes of the kernels a step is made of, per chip.

One formula per kernel, shared by the step coster (which asks what a layer's
ops cost) and by calibration (which times the same kernels in JAX and fits the
device model to them). Keeping both on one set of formulas is what makes a
calibrated profile mean something: the fitted efficiencies absorb whatever the
formulas leave out, for exactly the kernels the simulator prices.

Conventions: a matmul of an m×n weight costs 2·m·n FLOPs per token; bytes
count each tensor read or written once (weights once per kernel, activations
once per token), the traffic of a kernel whose intermediates stay on chip.
Arguments broadcast as numpy arrays, so a per-chip vector of token counts
costs every chip at once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class KernelCost(NamedTuple):
    flops: float | np.ndarray
    nbytes: float | np.ndarray


def dense(tokens, params, io_per_token, dtype_bytes) -> KernelCost:
    """Tokens through `params` weights (any matmul chain), reading and writing `io_per_token` values each."""
    return KernelCost(2.0 * tokens * params, (params + tokens * io_per_token) * dtype_bytes)


def matmul(tokens, d_in, d_out, dtype_bytes) -> KernelCost:
    """[tokens, d_in] @ [d_in, d_out]."""
    return dense(tokens, d_in * d_out, d_in + d_out, dtype_bytes)


def ffn(tokens, d_model, d_ff, matrices, dtype_bytes, weight_sets=1) -> KernelCost:
    """An FFN (2 matrices for GELU/ReLU, 3 for SwiGLU) over `weight_sets` experts' weights.

    Each token reads and writes d_model and leaves `matrices` × d_ff
    intermediates (up/gate outputs and their product) in HBM.
    """
    params = matrices * d_model * d_ff
    return KernelCost(2.0 * tokens * params, (weight_sets * params + tokens * (2 * d_model + matrices * d_ff)) * dtype_bytes)


def router(tokens, d_model, experts, dtype_bytes) -> KernelCost:
    """Router logits, softmax and top-k: the logits matmul, its input and two expert-wide outputs."""
    return dense(tokens, d_model * experts, d_model + 2 * experts, dtype_bytes)


def gather_permute(tokens, top_k, d_model, dtype_bytes) -> KernelCost:
    """Sort-based (dropless) dispatch or combine: gather k rows per token into expert order (read + write)."""
    return KernelCost(0.0, 2.0 * tokens * top_k * d_model * dtype_bytes)


def gather_combine(tokens, top_k, d_model, dtype_bytes) -> KernelCost:
    """The dropless combine: gather each token's k expert outputs back and sum them by gate (k rows read, one written)."""
    return KernelCost(2.0 * tokens * top_k * d_model, (top_k + 1.0) * tokens * d_model * dtype_bytes)


def einsum_dispatch(tokens, top_k, experts, capacity, d_model, dtype_bytes) -> KernelCost:
    """GShard one-hot dispatch (or combine): build the [tokens, experts, capacity] mask from the top-k choices, then
    einsum it with [tokens, d_model] (or with the [experts, capacity, d_model] expert outputs).

    `capacity` is per expert within the group of `tokens`; the mask makes this
    a real matmul whose FLOPs grow with the group's size. Building the mask
    writes k expert and slot one-hots and the mask, which the einsum reads.
    """
    slots = experts * capacity
    mask_bytes = 2.0 * tokens * slots + top_k * tokens * (experts + capacity)
    return KernelCost(2.0 * tokens * slots * d_model, (tokens * d_model + slots * d_model + mask_bytes) * dtype_bytes)


def attention_core(tokens, seq_len, heads, head_dim, dtype_bytes) -> KernelCost:
    """softmax(Q·Kᵀ)·V, non-causal (PaLM's MFU convention): Q, K, V read and the output written once."""
    return KernelCost(4.0 * tokens * seq_len * heads * head_dim, 4.0 * tokens * heads * head_dim * dtype_bytes)


def attention_scores(tokens, seq_len, heads, dtype_bytes, dropout: bool, backward: bool) -> KernelCost:
    """Unfused attention's s×s tensors through HBM (no flash attention): per query token, head and key, the
    forward writes Q·Kᵀ's scores, the (fused scale-mask-)softmax reads them and writes the probabilities, dropout
    reads those and writes the dropped ones and a one-byte mask, and P·V reads the result: 4 + 2 passes and the
    mask (8 bytes in bf16 without dropout, 13 with). The backward writes dP (dO·Vᵀ) and reads P for dV, runs
    dropout's backward (read, mask, write), the softmax's (dP and P read, dS written) and reads dS for dQ and for
    dK: 7 + 2 passes and the mask (14 or 19 bytes). The matmuls' FLOPs are :func:`attention_core`'s."""
    passes = (7.0 if backward else 4.0) + (2.0 if dropout else 0.0)
    return KernelCost(0.0, tokens * seq_len * heads * (passes * dtype_bytes + (1.0 if dropout else 0.0)))


def elementwise(tokens, d_model, passes, dtype_bytes) -> KernelCost:
    """A memory-bound op making `passes` reads or writes of a [tokens, d_model] tensor (norms, residuals, copies)."""
    return KernelCost(0.0, passes * tokens * d_model * dtype_bytes)


def optimizer(params, state_bytes, dtype_bytes) -> KernelCost:
    """An Adam-like update: ~10 FLOPs per parameter; state read and written, gradients read, weights read and written."""
    return KernelCost(10.0 * params, params * (2.0 * state_bytes + 3.0 * dtype_bytes))
