"""The MoE kernels pathsim prices, written in JAX so they can be timed for real.

Each variant builds a pure per-device function, the inputs it takes and its
cost by :mod:`pathsim.kernel_costs` (the formulas the step coster uses), so a
fitted profile predicts exactly what the simulator will ask of it. The
harness runs every kernel on all devices at once, as a step does.

Variants, by the simulator's kernel family:
- matmul: a dense [t, d_in] @ [d_in, d_out] (the compute anchor);
- ffn: a dense FFN with its activation (GELU, 2 matrices, or SwiGLU, 3);
- attention: softmax(Q·Kᵀ/√d)·V over [b, s, h, d_head];
- expert_ffn: a batched einsum over local experts, GELU (2 matrices) or SwiGLU (3);
- router: logits, softmax in float32, top-k and renormalised gates;
- permute and unpermute: the sort-and-gather (dropless) dispatch, and its gate-weighted combine;
- dispatch_einsum: GShard's dispatch and combine over a capacity: the one-hot masks built from the routing
  (:func:`gshard_masks`, as the end-to-end step builds them) and the einsum through them;
- elementwise: residual add + layer norm; copy: a scaled copy (the memory anchor);
- optimizer: an Adam update with float32 master weights and moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from pathsim import kernel_costs as kc
from pathsim.memory import OPTIMIZER_STATE_BYTES

DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
DTYPE_BYTES = {"bf16": 2, "f32": 4}


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]
    dtype: str  # a key of DTYPES, "f32" for float32 state, or "int32"
    high: int = 0  # int32 inputs are uniform in [0, high)


@dataclass(frozen=True)
class Kernel:
    name: str  # family/variant
    family: str
    shape: dict[str, int]
    dtype: str
    inputs: tuple[InputSpec, ...]
    body: Callable  # per-device arrays -> per-device outputs
    cost: kc.KernelCost


def _matmul(shape, dt, dtype):
    t, d_in, d_out = shape["t"], shape["d_in"], shape["d_out"]
    return ((InputSpec((t, d_in), dtype), InputSpec((d_in, d_out), dtype)),
            lambda x, w: x @ w,
            kc.matmul(t, d_in, d_out, DTYPE_BYTES[dtype]))


# The computations below are shared by the kernels and the end-to-end training step, so what is timed alone is
# what runs in the step.


def attention_core(q, k, v, dt):
    """softmax(Q·Kᵀ/√d)·V over [batch, seq, heads, head_dim], the scores in float32."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(float(q.shape[-1]))
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1).astype(dt), v)


def layer_norm(x, scale, dt):
    """Layer norm in float32 with a float32 scale, back in the compute dtype."""
    h = x.astype(jnp.float32)
    return ((h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-6) * scale).astype(dt)


def top_k_router(x, w, k: int):
    """Router logits, softmax in float32, top-k and renormalised gates: (gates, expert ids), both [tokens, k]."""
    probs = jax.nn.softmax((x @ w).astype(jnp.float32), axis=-1)
    gates, ids = jax.lax.top_k(probs, k)
    return gates / jnp.sum(gates, axis=-1, keepdims=True), ids


def adam_update(master, m, v, grad, lr: float = 1e-4):
    """One Adam step on float32 master weights and moments from a compute-dtype gradient."""
    b1, b2, eps = 0.9, 0.95, 1e-8
    g = grad.astype(jnp.float32)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return master - lr * m / (jnp.sqrt(v) + eps), m, v


def _attention(shape, dt, dtype):
    b, s, h, hd = shape["b"], shape["s"], shape["h"], shape["hd"]
    spec = InputSpec((b, s, h, hd), dtype)
    return (spec, spec, spec), lambda q, k, v: attention_core(q, k, v, dt), kc.attention_core(b * s, s, h, hd, DTYPE_BYTES[dtype])


EXPERT_SUBSCRIPTS = ("ecd,edf->ecf", "ecf,efd->ecd")


def _expert_ffn(swiglu: bool):
    def build(shape, dt, dtype):
        e, c, d, f = shape["e"], shape["c"], shape["d"], shape["f"]
        x, up, down = InputSpec((e, c, d), dtype), InputSpec((e, d, f), dtype), InputSpec((e, f, d), dtype)
        matrices = 3 if swiglu else 2
        return ((x, *(up,) * (matrices - 1), down), lambda x, *w: ffn_forward(x, w, swiglu, EXPERT_SUBSCRIPTS),
                kc.ffn(e * c, d, f, matrices, DTYPE_BYTES[dtype], weight_sets=e))
    return build


def ffn_forward(x, weights, swiglu: bool, subscripts: tuple[str, str] = ("td,df->tf", "tf,fd->td")):
    """One FFN (dense: the default subscripts; experts: batched over their weights), as every kernel and the
    end-to-end step compute it."""
    up, down = subscripts
    if swiglu:
        w_gate, w_up, w_down = weights
        hidden = jax.nn.silu(jnp.einsum(up, x, w_gate)) * jnp.einsum(up, x, w_up)
    else:
        w_up, w_down = weights
        hidden = jax.nn.gelu(jnp.einsum(up, x, w_up))
    return jnp.einsum(down, hidden, w_down)


def _dense_ffn(swiglu: bool):
    def build(shape, dt, dtype):
        t, d, f = shape["t"], shape["d"], shape["f"]
        up, down = InputSpec((d, f), dtype), InputSpec((f, d), dtype)
        matrices = 3 if swiglu else 2
        return ((InputSpec((t, d), dtype), *(up,) * (matrices - 1), down),
                lambda x, *w: ffn_forward(x, w, swiglu), kc.ffn(t, d, f, matrices, DTYPE_BYTES[dtype]))
    return build


def _router(shape, dt, dtype):
    t, d, e, k = shape["t"], shape["d"], shape["e"], shape["k"]
    return ((InputSpec((t, d), dtype), InputSpec((d, e), dtype)), lambda x, w: top_k_router(x, w, k),
            kc.router(t, d, e, DTYPE_BYTES[dtype]))


def _gather_dispatch(shape, dt, dtype):
    t, d, e, k = shape["t"], shape["d"], shape["e"], shape["k"]

    def body(x, expert_ids):
        order = jnp.argsort(expert_ids.reshape(-1), stable=True)
        return x[order // k], order

    return (InputSpec((t, d), dtype), InputSpec((t, k), "int32", e)), body, kc.gather_permute(t, k, d, DTYPE_BYTES[dtype])


def _gather_combine(shape, dt, dtype):
    t, d, k = shape["t"], shape["d"], shape["k"]

    def body(expert_out, inverse_order, gates):
        rows = expert_out[inverse_order].reshape(t, k, d)
        return jnp.einsum("tkd,tk->td", rows, gates.astype(dt))

    return ((InputSpec((t * k, d), dtype), InputSpec((t * k,), "int32", t * k), InputSpec((t, k), "f32")),
            body, kc.gather_combine(t, k, d, DTYPE_BYTES[dtype]))


def gshard_masks(ids, gates, experts: int, capacity: int, dt):
    """GShard's dispatch mask and combine weights, both [tokens, experts, capacity], from top-k `ids` and `gates`.

    A token-assignment's slot is its order among the assignments to its expert,
    first choices of every token before second choices; past `capacity` it is
    dropped. Built as Mesh TensorFlow does, an einsum over k of an expert
    one-hot and a slot one-hot, which XLA runs far faster than one-hot
    encoding the slot over the whole [experts × capacity] plane.
    """
    chosen = jax.nn.one_hot(ids.T, experts, dtype=jnp.int32)  # [k, tokens, experts]
    slot = ((jnp.cumsum(chosen.reshape(-1, experts), axis=0).reshape(chosen.shape) - 1) * chosen).sum(-1)  # [k, tokens]
    expert_hot = jax.nn.one_hot(ids.T, experts, dtype=dt) * (slot < capacity)[..., None].astype(dt)
    slot_hot = jax.nn.one_hot(slot, capacity, dtype=dt)
    dispatch = jnp.einsum("kte,ktc->tec", expert_hot, slot_hot)
    combine = jnp.einsum("kte,ktc->tec", expert_hot * gates.T[..., None].astype(dt), slot_hot)
    return dispatch, combine


def _einsum_dispatch(shape, dt, dtype):
    t, e, c, d, k = shape["t"], shape["e"], shape["c"], shape["d"], shape["k"]

    def body(ids, x):
        dispatch, _ = gshard_masks(ids, jnp.ones(ids.shape, dt), e, c, dt)
        return jnp.einsum("tec,td->ecd", dispatch, x)

    return ((InputSpec((t, k), "int32", e), InputSpec((t, d), dtype)), body,
            kc.einsum_dispatch(t, k, e, c, d, DTYPE_BYTES[dtype]))


def _einsum_combine(shape, dt, dtype):
    t, e, c, d, k = shape["t"], shape["e"], shape["c"], shape["d"], shape["k"]

    def body(ids, gates, y):
        _, combine = gshard_masks(ids, gates, e, c, dt)
        return jnp.einsum("tec,ecd->td", combine, y)

    return ((InputSpec((t, k), "int32", e), InputSpec((t, k), "f32"), InputSpec((e, c, d), dtype)), body,
            kc.einsum_dispatch(t, k, e, c, d, DTYPE_BYTES[dtype]))


def _residual_norm(shape, dt, dtype):
    t, d = shape["t"], shape["d"]

    def body(x, residual, scale):
        summed = x + residual
        return summed, layer_norm(summed, scale, dt)

    return ((InputSpec((t, d), dtype), InputSpec((t, d), dtype), InputSpec((d,), "f32")), body,
            kc.elementwise(t, d, 4, DTYPE_BYTES[dtype]))


def _copy(shape, dt, dtype):
    t, d = shape["t"], shape["d"]
    return (InputSpec((t, d), dtype),), lambda x: x * jnp.asarray(2, dt), kc.elementwise(t, d, 2, DTYPE_BYTES[dtype])


def _adam(shape, dt, dtype):
    p = shape["p"]

    def body(master, m, v, grad):
        master, m, v = adam_update(master, m, v, grad)
        return master, m, v, master.astype(dt)

    state = InputSpec((p,), "f32")
    return (state, state, state, InputSpec((p,), dtype)), body, kc.optimizer(p, OPTIMIZER_STATE_BYTES["adam"], DTYPE_BYTES[dtype])


VARIANTS: dict[str, Callable] = {
    "matmul/dense": _matmul,
    "ffn/gelu": _dense_ffn(swiglu=False),
    "ffn/swiglu": _dense_ffn(swiglu=True),
    "attention/core": _attention,
    "expert_ffn/gelu": _expert_ffn(swiglu=False),
    "expert_ffn/swiglu": _expert_ffn(swiglu=True),
    "router/topk": _router,
    "permute/gather_dispatch": _gather_dispatch,
    "unpermute/gather_combine": _gather_combine,
    "dispatch_einsum/dispatch": _einsum_dispatch,
    "dispatch_einsum/combine": _einsum_combine,
    "elementwise/residual_norm": _residual_norm,
    "copy/scale": _copy,
    "optimizer/adam": _adam,
}


def build(name: str, shape: dict[str, int], dtype: str) -> Kernel:
    """One kernel variant at one shape and dtype."""
    inputs, body, cost = VARIANTS[name](shape, DTYPES[dtype], dtype)
    return Kernel(name, name.split("/")[0], dict(shape), dtype, tuple(inputs), body,
                  kc.KernelCost(float(cost.flops), float(cost.nbytes)))
