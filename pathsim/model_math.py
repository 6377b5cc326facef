"""Transformer arithmetic: parameters, FLOPs and activation bytes per token.

Conventions (cited so figures can be compared with papers):
- A matmul of an m×n weight costs 2·m·n FLOPs per token (multiply + add).
- Attention scores and the weighted sum cost 4·seq·heads·head_dim FLOPs per
  token per layer, non-causal, as in PaLM's MFU formula (Chowdhery et al. 2022,
  App. B: 6N + 12·L·H·Q·T per token for training).
- Expert FFN: 2 × matrices × d_model × d_ff per token per expert (2 matrices
  for GELU/ReLU, 3 for SwiGLU); router: 2 × d_model × experts per token
  (../shared/REFERENCES.md). Training = 3 × forward (backward = 2 × forward).
- Encoder-decoder models: figures are per input (encoder) token; a decoder
  layer runs on target/input of them and adds cross-attention (Q and output
  projections on its tokens, K and V projections on the encoder's, scores over
  the input length), as in T5 (Raffel et al. 2020, Sec. 3.1).
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
    attention_core_flops: float  # per token of a decoder-only model or an encoder layer, forward
    embedding_params: int
    head_flops: float  # LM head per token, forward
    query_params: int  # of an attention block: its Q and output projections (the rest, K and V, read the keys' side)

    @property
    def key_value_params(self) -> int:
        """An attention block's K and V projections (what cross-attention applies to the encoder's tokens)."""
        return self.attention_params - self.query_params


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
        query_params=2 * model.d_model * head_dim * model.heads,
    )


def layer_params(model: ModelSpec, layer: int, shapes: LayerShapes | None = None) -> int:
    """Dense (non-expert) parameters of one layer — attention (and a decoder's cross-attention), router and shared
    experts or the dense FFN; ``layer == model.layers`` stands for the embeddings and head."""
    s = shapes or layer_shapes(model)
    if layer == model.layers:
        return s.embedding_params
    cross = s.attention_params if model.is_decoder_with_encoder(layer) else 0
    return s.attention_params + cross + ((s.router_params + s.shared_params) if model.is_moe(layer) else s.dense_ffn_params)


def layer_forward_flops(model: ModelSpec) -> list[float]:
    """Forward FLOPs of each layer per input token (active experts only), the LM head's added to the last layer."""
    s = layer_shapes(model)
    moe = model.moe
    flops = []
    for i in range(model.layers):
        ffn = (s.router_params + s.shared_params + moe.top_k * s.expert_params) if model.is_moe(i) else s.dense_ffn_params
        share = model.token_share(i)
        own = share * (2.0 * (s.attention_params + ffn) + 4.0 * model.self_attention_len(i) * model.heads * s.head_dim)
        if model.is_decoder_with_encoder(i):  # cross-attention: Q, O and scores on the targets, K and V on the inputs
            own += (share * (2.0 * s.query_params + 4.0 * model.seq_len * model.heads * s.head_dim)
                    + 2.0 * s.key_value_params)
        flops.append(own)
    flops[-1] += model.token_share(model.layers) * s.head_flops
    return flops


@dataclass(frozen=True)
class ModelTotals:
    total_params: int
    active_params_per_token: int
    expert_params: int  # routed experts over all MoE layers
    forward_flops_per_token: float  # model FLOPs (no recompute), whole network


def model_totals(model: ModelSpec) -> ModelTotals:
    s = layer_shapes(model)
    n_moe = len(model.moe_layers)
    moe = model.moe
    routed_total = n_moe * moe.experts * s.expert_params if moe else 0
    routed_active = n_moe * moe.top_k * s.expert_params if moe else 0
    dense = sum(layer_params(model, i, s) for i in range(model.layers))
    return ModelTotals(total_params=dense + routed_total + s.embedding_params,
                       active_params_per_token=dense + routed_active + s.embedding_params,
                       expert_params=routed_total, forward_flops_per_token=sum(layer_forward_flops(model)))


def attention_widths(model: ModelSpec) -> tuple[int, int]:
    """The width of an attention block's queries (heads × head_dim) and of its keys or values (kv_heads × head_dim)."""
    head_dim = model.head_dim or model.d_model // model.heads
    return model.heads * head_dim, (model.kv_heads or model.heads) * head_dim


def mlp_activation_bytes(d_model: int, d_ff: int, matrices: int, dropout: bool = True) -> float:
    """Bytes one token leaves stored in one FFN for the backward pass (16-bit): its input, the hidden activations,
    and the 1-byte mask of the dropout after it (if the model trains with dropout)."""
    return (2.0 + (1.0 if dropout else 0.0)) * d_model + 2.0 * matrices * d_ff


# Of a layer's 34 h bytes per token (Korthikanti et al. 2022, Sec. 4.1), those tensor parallelism alone does not
# split: the two layer norms' inputs (4 h), the inputs of the attention and MLP blocks (2 h each) and their two
# dropout masks (h each) — Table 2's "10" in sbh(10 + 24/t + 5as/(ht)). Sequence parallelism splits them too.
REPLICATED_WITHOUT_SEQUENCE_PARALLELISM = 10.0


def activation_bytes_per_token(model: ModelSpec, layer_is_moe: bool, recompute: str, tensor: int = 1,
                               sequence_parallel: bool = True, keys: int | None = None) -> float:
    """Activation bytes of one layer kept for backward (16-bit activations), per token of a tensor rank's share of
    the sequence (tokens / tensor): multiplied by a chip's tokens, Table 2 of Korthikanti et al. 2022 —
    sbh(34/t + 5as/(ht)) with sequence parallelism, sbh(10 + 24/t + 5as/(ht)) without; selective recompute or
    fused (flash) attention drops the 5as/h term, full recompute keeps only each layer's input (2 sbh, split over t
    only with sequence parallelism).

    Table 2 is of GPT-3-shaped layers: multi-head attention and dropout. Its attention term, 11h, is the input
    (2h), Q, K and V (2h each), the output projection's input (2h) and the dropout mask (h): with grouped-query
    attention K and V are kv_heads/heads of that, and a model trained without dropout keeps no masks (h after
    attention, h after the MLP, as per score in the 5as) and no dropped-out scores (2as of the 5as). `keys`: the
    self-attention's keys per query (default seq_len)."""
    h = model.d_model
    masks = 1.0 if model.dropout else 0.0
    whole = 1.0 if sequence_parallel else float(tensor)  # what a tensor rank holds of the parts TP alone leaves whole
    if recompute == "full":
        return 2.0 * h * whole
    replicated = (whole - 1.0) * (REPLICATED_WITHOUT_SEQUENCE_PARALLELISM - 2.0 * (1.0 - masks)) * h
    scores_kept = recompute == "none" and not model.flash_attention  # the s×s softmax (and its dropout): 5as per token
    q, kv = attention_widths(model)
    attention = 2.0 * h + 4.0 * q + 4.0 * kv + masks * h
    attention += (2.0 + 3.0 * masks) * model.heads * (keys or model.seq_len) if scores_kept else 0.0
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


def layer_activation_bytes(model: ModelSpec, layer: int, recompute: str, tensor: int = 1,
                           sequence_parallel: bool = True) -> float:
    """:func:`activation_bytes_per_token` of one layer per input token: a decoder layer of an encoder-decoder model
    keeps its share of target tokens' activations and its cross-attention's — the input of its layer norm and of
    the Q projection, Q and the output projection's input, the dropout mask, the scores over the input length
    (unless recomputed or fused), and K and V of every input token."""
    own = activation_bytes_per_token(model, model.is_moe(layer), recompute, tensor, sequence_parallel,
                                     model.self_attention_len(layer))
    share = model.token_share(layer)
    if not model.is_decoder_with_encoder(layer) or recompute == "full":  # full: the layer's input only, counted above
        return share * own
    h, masks = model.d_model, (1.0 if model.dropout else 0.0)
    whole = 1.0 if sequence_parallel else float(tensor)
    q, kv = attention_widths(model)
    cross = 4.0 * h + 4.0 * q + masks * h + (whole - 1.0) * (4.0 + masks) * h
    if recompute == "none" and not model.flash_attention:
        cross += (2.0 + 3.0 * masks) * model.heads * model.seq_len
    return share * (own + cross) + 4.0 * kv
