"""Transformer arithmetic: parameters, FLOPs and activation bytes per token.

Conventions (cited so figures can be compared with papers):
- A matmul of an m×n weight costs 2·m·n FLOPs per token (multiply + add).
- Attention scores and the weighted sum cost 4·seq·heads·head_dim FLOPs per
  token per layer, non-causal, as in PaLM's MFU formula (Chowdhery et al. 2022,
  App. B: 6N + 12·L·H·Q·T per token for training).
- Expert FFN: 2 × matrices × d_model × d_ff per token per expert (2 matrices
  for GELU/ReLU, 3 for SwiGLU); router: 2 × d_model × experts per token
  (../shared/REFERENCES.md). Training = 3 × forward (backward = 2 × forward).
- Activation bytes per token per layer follow Korthikanti et al. 2022
  ("Reducing Activation Recomputation in Large Transformer Models", §4):
  attention 11·h + 5·a·s bytes (16-bit), MLP 19·h at d_ff = 4h, layer norms
  4·h. The MLP term is generalised to 3·h + 2·matrices·d_ff so SwiGLU and
  MoE widths are counted; selective recompute drops the 5·a·s term, full
  recompute keeps only each layer's 2·h input.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathsim.workload import ModelSpec


def ffn_params(d_model: int, d_ff: int, matrices: int) -> int:
    return matrices * d_model * d_ff


@dataclass(frozen=True)
class LayerShapes:
    """Per-layer sizes derived once from a ModelSpec."""

    attention_params: int
    dense_ffn_params: int
    router_params: int
    expert_params: int  # one routed expert
    shared_params: int  # all shared experts together
    head_dim: int
    attention_core_flops: float  # per token, forward
    embedding_params: int
    head_flops: float  # LM head per token, forward


def layer_shapes(model: ModelSpec) -> LayerShapes:
    head_dim = model.head_dim or model.d_model // model.heads
    kv = model.kv_heads or model.heads
    attention = model.d_model * head_dim * (2 * model.heads + 2 * kv)
    m = model.ffn_matrices
    moe = model.moe
    router = expert = shared = 0
    if moe is not None:
        router = model.d_model * moe.experts
        expert = ffn_params(model.d_model, moe.expert_ffn, m)
        shared = moe.shared_experts * ffn_params(model.d_model, moe.shared_ffn or moe.expert_ffn, m)
    return LayerShapes(
        attention_params=attention,
        dense_ffn_params=ffn_params(model.d_model, model.dense_ffn, m),
        router_params=router,
        expert_params=expert,
        shared_params=shared,
        head_dim=head_dim,
        attention_core_flops=4.0 * model.seq_len * model.heads * head_dim,
        embedding_params=(1 if model.tied_embeddings else 2) * model.vocab * model.d_model,  # input embedding (+ untied head)
        head_flops=2.0 * model.vocab * model.d_model,
    )


@dataclass(frozen=True)
class ModelTotals:
    total_params: int
    active_params_per_token: int
    expert_params: int  # routed experts over all MoE layers
    forward_flops_per_token: float  # model FLOPs (no recompute), whole network


def model_totals(model: ModelSpec) -> ModelTotals:
    s = layer_shapes(model)
    n_moe = len(model.moe_layers)
    n_dense = model.layers - n_moe
    moe = model.moe
    routed_total = n_moe * moe.experts * s.expert_params if moe else 0
    routed_active = n_moe * moe.top_k * s.expert_params if moe else 0
    per_moe_layer_fixed = s.router_params + s.shared_params
    total = (model.layers * s.attention_params + n_dense * s.dense_ffn_params
             + n_moe * per_moe_layer_fixed + routed_total + s.embedding_params)
    active_matmul = (model.layers * s.attention_params + n_dense * s.dense_ffn_params
                     + n_moe * per_moe_layer_fixed + routed_active)
    forward = 2.0 * active_matmul + model.layers * s.attention_core_flops + s.head_flops
    return ModelTotals(total_params=total, active_params_per_token=active_matmul + s.embedding_params,
                       expert_params=routed_total, forward_flops_per_token=forward)


def mlp_activation_bytes(d_model: int, d_ff: int, matrices: int, dropout: bool = True) -> float:
    """Bytes one token leaves stored in one FFN for the backward pass (16-bit): its input, the hidden activations,
    and the 1-byte mask of the dropout after it (if the model trains with dropout)."""
    return (2.0 + (1.0 if dropout else 0.0)) * d_model + 2.0 * matrices * d_ff


# Of a layer's 34 h bytes per token (Korthikanti et al. 2022, Sec. 4.1), those tensor parallelism alone does not
# split: the two layer norms' inputs (4 h), the inputs of the attention and MLP blocks (2 h each) and their two
# dropout masks (h each) — Table 2's "10" in sbh(10 + 24/t + 5as/(ht)). Sequence parallelism splits them too.
REPLICATED_WITHOUT_SEQUENCE_PARALLELISM = 10.0


def activation_bytes_per_token(model: ModelSpec, layer_is_moe: bool, recompute: str, tensor: int = 1,
                               sequence_parallel: bool = True) -> float:
    """Activation bytes of one layer kept for backward (16-bit activations), per token of a tensor rank's share of
    the sequence (tokens / tensor): multiplied by a chip's tokens, Table 2 of Korthikanti et al. 2022 —
    sbh(34/t + 5as/(ht)) with sequence parallelism, sbh(10 + 24/t + 5as/(ht)) without; selective recompute or
    fused (flash) attention drops the 5as/h term, full recompute keeps only each layer's input (2 sbh, split over t
    only with sequence parallelism).

    Table 2 is of GPT-3-shaped layers: multi-head attention and dropout. Its attention term, 11h, is the input
    (2h), Q, K and V (2h each), the output projection's input (2h) and the dropout mask (h): with grouped-query
    attention K and V are kv_heads/heads of that, and a model trained without dropout keeps no masks (h after
    attention, h after the MLP, as per score in the 5as) and no dropped-out scores (2as of the 5as)."""
    h = model.d_model
    masks = 1.0 if model.dropout else 0.0
    whole = 1.0 if sequence_parallel else float(tensor)  # what a tensor rank holds of the parts TP alone leaves whole
    if recompute == "full":
        return 2.0 * h * whole
    replicated = (whole - 1.0) * (REPLICATED_WITHOUT_SEQUENCE_PARALLELISM - 2.0 * (1.0 - masks)) * h
    scores_kept = recompute == "none" and not model.flash_attention  # the s×s softmax (and its dropout): 5as per token
    head_dim = model.head_dim or h // model.heads
    q, kv = model.heads * head_dim, (model.kv_heads or model.heads) * head_dim
    attention = 2.0 * h + 4.0 * q + 4.0 * kv + masks * h
    attention += (2.0 + 3.0 * masks) * model.heads * model.seq_len if scores_kept else 0.0
    norms = 4.0 * h
    m = model.ffn_matrices
    if layer_is_moe:
        moe = model.moe
        mlp = moe.top_k * mlp_activation_bytes(h, moe.expert_ffn, m, model.dropout)
        mlp += moe.shared_experts * mlp_activation_bytes(h, moe.shared_ffn or moe.expert_ffn, m, model.dropout)
        mlp += 4.0 * moe.experts  # router logits and probabilities (fp16)
    else:
        mlp = mlp_activation_bytes(h, model.dense_ffn, m, model.dropout)
    return attention + norms + mlp + replicated
