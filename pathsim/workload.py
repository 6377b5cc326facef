"""Workload configuration: the model, its training batch, parallelism and tasks.

A workload YAML (presets in ``workloads/``) describes a Mixture-of-Experts
transformer and the multi-task, multi-modal token stream it is trained on. Each
task carries its own routing behaviour (uniform, Zipf skew, Dirichlet skew, a
measured histogram) and optionally an affinity to a subset of experts, the
LIMoE-style modality specialisation that makes expert load differ per task.

The cluster is not part of a workload: the same workload runs on any cluster,
and degrees left as ``auto`` are resolved against the cluster's chip count by
:func:`resolve_parallelism`.
"""

from __future__ import annotations

from functools import cached_property
import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import numpy as np
from annotated_types import Gt
from pydantic import Field, StrictInt, model_validator

from pathsim.cluster import StrictModel
from pathsim.errors import PathsimConfigError
from pathsim.numeric_files import read_numeric_array
from pathsim.units import Bytes
from pathsim.yaml_config import load_config, resolve_reference, validate_model

PositiveInt = Annotated[StrictInt, Field(gt=0)]
# A step is simulated op by op, a few tens of ops per layer and micro-batch: beyond the deepest trained models
# (DeepNet's 1,000 layers) by ten, and a bound on the step graph a typo (layers: 1e9) would otherwise build.
MAX_LAYERS = 10_000
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


class MoESpec(StrictModel):
    """The sparse part: which layers are MoE and how tokens are routed to experts."""

    experts: PositiveInt = Field(description="routed experts per MoE layer")
    top_k: PositiveInt = 1
    expert_ffn: PositiveInt = Field(description="d_ff of one routed expert")
    every: PositiveInt = Field(1, description="layer i is MoE iff i >= first_dense and (i - first_dense) % every == every - 1")
    first_dense: Annotated[StrictInt, Field(ge=0)] = 0
    shared_experts: Annotated[StrictInt, Field(ge=0)] = 0
    shared_ffn: PositiveInt | None = Field(None, description="d_ff of one shared expert (default: expert_ffn)")
    capacity_factor: float = Field(1.25, gt=0, allow_inf_nan=False)
    dropless: bool = False
    dispatch: Literal["gather", "einsum"] = Field(
        "gather", description="how tokens reach expert order on a chip: sort and gather (MegaBlocks, dropless-capable), or "
                              "GShard's one-hot einsum over a [tokens, experts, capacity] mask, one group per chip (Mesh TF, Switch)")

    @model_validator(mode="after")
    def _top_k_fits(self) -> "MoESpec":
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds the number of experts ({self.experts})")
        if self.dispatch == "einsum" and self.dropless:
            raise ValueError("einsum dispatch needs a capacity (its mask is [tokens, experts, capacity]); "
                             "set dropless: false or dispatch: gather")
        return self


class ModelSpec(StrictModel):
    layers: PositiveInt = Field(le=MAX_LAYERS, description="transformer layers (encoder and decoder together)")
    d_model: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt | None = Field(None, description="key/value heads (GQA/MQA); default: heads")
    head_dim: PositiveInt | None = Field(None, description="default: d_model / heads")
    seq_len: PositiveInt
    vocab: PositiveInt
    tied_embeddings: bool = Field(False, description="the output head reuses the input embedding matrix (PaLM, T5)")
    ffn_kind: Literal["gelu", "relu", "swiglu"] = "gelu"
    flash_attention: bool = Field(False, description="fused (flash) attention: the s×s scores and softmax are never "
                                                     "stored, so activations have no 5as/h term (as with selective recompute) "
                                                     "and no pass over them goes through HBM; unfused, each pass is timed")
    dropout: bool = Field(True, description="trained with dropout after attention and the MLP: its masks are kept for "
                                            "backward (Korthikanti et al.'s GPT-3 layers); Llama-style pre-training has none")
    parallel_layers: bool = Field(False, description="attention and a dense FFN read the same layer norm and their outputs "
                                                     "are summed (GPT-J, PaLM): one tensor-parallel all-reduce per layer, not two")
    dense_ffn: PositiveInt = Field(description="d_ff of the dense (non-MoE) FFN layers")
    dtype: str = Field("bf16", description="compute dtype: a key of the chip's peak_flops (or of its emulated_dtypes)")
    matmul_precision: Literal["default", "high", "highest"] = Field(
        "default", description="passes of the matrix units' dtype an emulated dtype's matmul takes (fp32 on a TPU: "
                               "one bfloat16 pass by default, 3 at high, 6 at highest, as XLA's precision levels); "
                               "ignored where the chip has a rate for model.dtype")
    moe: MoESpec | None = None
    encoder_layers: NonNegativeInt = Field(
        0, description="encoder-decoder models (T5, Switch, GShard's translation models): the first encoder_layers of "
                       "`layers` are an encoder over seq_len input tokens, the rest a decoder over decoder_seq_len target "
                       "tokens whose layers add cross-attention to the encoder's output; tokens_per_step then counts "
                       "input tokens. 0: decoder-only")
    decoder_seq_len: PositiveInt | None = Field(
        None, description="target tokens per sequence of an encoder-decoder model (T5's span corruption: 114 for 512 "
                          "inputs); default seq_len")

    @model_validator(mode="after")
    def _shapes(self) -> "ModelSpec":
        if self.head_dim is None and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) is not a multiple of heads ({self.heads}); set head_dim")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.encoder_layers >= self.layers:
            raise ValueError(f"encoder_layers ({self.encoder_layers}) leaves no decoder layer among {self.layers}; "
                             f"layers counts encoder and decoder layers together")
        if self.decoder_seq_len is not None and not self.encoder_layers:
            raise ValueError("decoder_seq_len applies to encoder-decoder models: set encoder_layers too, or drop it")
        if self.moe is not None and not self.moe_layers:
            raise ValueError(f"moe.every={self.moe.every} and moe.first_dense={self.moe.first_dense} leave no MoE layer "
                             f"among {self.layers}")
        return self

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 2)

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.ffn_kind == "swiglu" else 2

    @cached_property
    def moe_layers(self) -> tuple[int, ...]:
        """0-based indices of the MoE layers."""
        if self.moe is None:
            return ()
        m = self.moe
        return tuple(i for i in range(m.first_dense, self.layers) if (i - m.first_dense) % m.every == m.every - 1)

    @cached_property
    def _moe_layer_set(self) -> frozenset[int]:
        return frozenset(self.moe_layers)

    def is_moe(self, layer: int) -> bool:
        return layer in self._moe_layer_set

    def is_decoder_with_encoder(self, layer: int) -> bool:
        """Whether `layer` (``layers``: the LM head) runs on an encoder-decoder model's target tokens, with
        cross-attention to the encoder (the head has none)."""
        return self.encoder_layers > 0 and layer >= self.encoder_layers

    @property
    def target_len(self) -> int:
        """Tokens per sequence the decoder runs on: decoder_seq_len, or seq_len for a decoder-only model."""
        return self.decoder_seq_len or self.seq_len

    def token_share(self, layer: int) -> float:
        """Tokens `layer` (``layers``: the LM head) runs on per input token: target / input length on an
        encoder-decoder model's decoder, else 1."""
        return self.target_len / self.seq_len if self.is_decoder_with_encoder(layer) else 1.0

    def self_attention_len(self, layer: int) -> int:
        """Keys each query of `layer`'s self-attention sees (the whole sequence, non-causal, as the FLOP count
        convention has it)."""
        return self.target_len if self.is_decoder_with_encoder(layer) else self.seq_len


DTYPE_BYTES = {"bf16": 2, "fp16": 2, "f16": 2, "fp32": 4, "f32": 4, "fp8": 1, "int8": 1}


class TrainingSpec(StrictModel):
    tokens_per_step: PositiveInt = Field(le=2**50, description="global batch in tokens")
    micro_batches: PositiveInt = Field(1, description="gradient-accumulation steps per optimizer step")
    optimizer: Literal["adam", "adafactor", "sgd"] = "adam"
    recompute: Literal["none", "selective", "full"] = "none"
    grad_sync_overlap: bool = Field(True, description="overlap gradient sync with the backward pass")
    compute_share: float = Field(
        1.0, gt=0, le=1, allow_inf_nan=False,
        description="share of each chip's arithmetic throughput its compute kernels get: below 1 where the run gives "
                    "cores to communication kernels for the whole step (DeepSeek-V3: 20 of an H800's 132 SMs for its "
                    "all-to-all and pipeline kernels, so 112/132); memory-bound kernels still reach full bandwidth")
    shard_optimizer: bool = Field(True, description="ZeRO-1: optimizer state sharded over data-parallel replicas")
    shard_gradients: bool = Field(
        False, description="ZeRO-2: gradients sharded too, over the same replicas as the optimizer state (each bucket "
                           "reduce-scattered as it completes, so a chip keeps only its shard); needs shard_optimizer")
    shard_parameters: bool = Field(
        False, description="ZeRO-3 / fully sharded data parallelism: dense parameters and their gradients sharded over the "
                           "data-parallel ranks of each slice, each layer's weights all-gathered (one layer ahead) before its "
                           "forward and again before its backward, gradients reduce-scattered (PaLM's 2D weight sharding)")
    grad_bucket_bytes: Annotated[Bytes, Gt(0)] = Field(
        25e6, description="gradients are all-reduced in buckets of at most this size (PyTorch DDP's default bucket_cap_mb=25)")


class ParallelismSpec(StrictModel):
    """Degrees of parallelism. chips = data × tensor; expert parallelism runs inside the data-parallel ranks.

    Chips are numbered by the cluster (torus row-major, GPUs of a node
    consecutive); tensor-parallel groups are consecutive chip ids, expert groups
    the next level up, so ``tensor: 8`` on DGX nodes keeps tensor traffic on NVLink.
    """

    tensor: PositiveInt = 1
    expert: PositiveInt | Literal["auto"] = Field("auto", description="chips per expert-parallel group (auto: all data-parallel ranks, at most one group per expert set)")
    expert_spans_tensor: bool = Field(
        False, description="expert groups of `expert` consecutive chips, across the tensor ranks: attention is tensor-"
                           "parallel, experts are not (Megatron-Core's expert-tensor size 1 with expert parallelism folded "
                           "over the tensor ranks, as DeepSeek-style runs lay out MoE on TP-sharded attention); false: "
                           "`expert` data ranks, each of their tensor ranks a copy of the group for its share of tokens")
    expert_tensor: bool = Field(
        False, description="expert-tensor parallelism: each expert's FFN split over the tensor ranks of its data rank, "
                           "which gather the tokens dispatched to them before the experts and reduce-scatter the "
                           "outputs after (Megatron-Core's expert-tensor size = tensor); a chip holds 1/tensor of its "
                           "experts' weights. False: each tensor rank holds its experts whole, for its share of tokens")
    data: PositiveInt | Literal["auto"] = Field("auto", description="data-parallel degree (auto: chips / tensor)")
    context: PositiveInt = Field(1, description="context parallelism: each sequence split over this many ranks (after the "
                                                "tensor ranks, before the data ranks); chips = pipeline × data × context × tensor")
    context_algorithm: Literal["ring", "all_gather"] = Field(
        "ring", description="ring: K/V blocks passed around the context group while attention computes (ring attention); "
                            "all_gather: K/V gathered before attention and their gradients reduce-scattered after (Llama 3)")
    sequence_parallel: bool = Field(
        True, description="Megatron-LM sequence parallelism (Korthikanti et al. 2022): layer norms, dropout and the inputs "
                          "of the tensor-parallel blocks are split over the tensor ranks too (their all-reduces become "
                          "reduce-scatter + all-gather, the same bytes); off, each tensor rank keeps and computes them whole")
    pipeline: PositiveInt = Field(1, description="pipeline stages: chips = pipeline × data × tensor; stage s takes the s-th "
                                                 "block of consecutive chips (neighbouring slabs of a torus, nodes of a fat tree)")
    pipeline_schedule: Literal["gpipe", "1f1b", "interleaved", "zb1p", "dualpipe"] = Field(
        "1f1b", description="the order each stage runs its micro-batches (pathsim/builders/schedules.py); "
                            "training.micro_batches are the pipeline's micro-batches")
    virtual_stages: PositiveInt = Field(1, description="model chunks per stage (interleaved schedule: at least 2)")
    pipeline_overlap_p2p: bool = Field(
        True, description="a stage goes on while its activations or gradients are sent (batched isend/irecv overlapped "
                          "with compute, Megatron-LM's overlap_p2p_comm, DualPipe); false: it waits for each send to "
                          "finish first, as Megatron-LM of 2021 did (its exchanges waited on every request)")
    microbatch_group: PositiveInt | None = Field(
        None, description="interleaved schedule: micro-batches a stage runs through one chunk before the next (Megatron-LM's "
                          "microbatch group per virtual stage, the Llama 3 paper's N): from the stages (the default, SC'21's "
                          "depth-first order) up to training.micro_batches (breadth-first)")
    stage_layers: list[NonNegativeInt] | None = Field(
        None, description="layers of each virtual stage, in order (pipeline × virtual_stages entries summing to model.layers; "
                          "a 0 leaves a chunk only the embedding or the head, as Llama 3 405B's first and last); "
                          "default: contiguous blocks balancing compute, the LM head counted on the last stage")
    axes_order: list[Literal["x", "y", "z"]] | None = Field(
        None, description="torus clusters: the axes ranks walk, fastest first (default: the cluster's last axis fastest). "
                          "Tensor groups take the first ranks, expert groups the next, data replicas the rest.")


class UniformRouting(StrictModel):
    kind: Literal["uniform"]


class ZipfRouting(StrictModel):
    """Expert popularity ∝ 1/rank^exponent, over a per-(task, layer) random ranking of the experts."""

    kind: Literal["zipf"]
    exponent: float = Field(ge=0, le=10, allow_inf_nan=False)


class DirichletRouting(StrictModel):
    """Expert popularity drawn from a symmetric Dirichlet; small concentration = strong skew."""

    kind: Literal["dirichlet"]
    concentration: float = Field(gt=0, allow_inf_nan=False)


class HistogramRouting(StrictModel):
    """Measured routing: tokens per expert per MoE layer (rows) from a real router, as .npy or .csv."""

    kind: Literal["histogram"]
    file: str


RoutingSpec = Annotated[Union[UniformRouting, ZipfRouting, DirichletRouting, HistogramRouting], Field(discriminator="kind")]


class AffinitySpec(StrictModel):
    """A fraction ``weight`` of the task's routing mass goes to ``experts`` (e.g. LIMoE's image experts)."""

    experts: str | list[StrictInt] = Field(description='expert ids: "0-63,128-135" or a list')
    weight: float = Field(gt=0, le=1, allow_inf_nan=False)

    def expert_ids(self) -> np.ndarray:
        return parse_id_ranges(self.experts)


class TaskSpec(StrictModel):
    name: str = Field(min_length=1)
    modality: str = "text"
    share: float = Field(gt=0, le=1, allow_inf_nan=False, description="fraction of the global tokens")
    routing: RoutingSpec = Field(default_factory=lambda: UniformRouting(kind="uniform"))
    affinity: AffinitySpec | None = None
    reachable_experts: str | list[StrictInt] | None = Field(
        None, description='expert ids this task\'s router can pick, e.g. "0-255" (default: all). Tasks trained before '
                          'experts were added keep routing over the old ones; routing skew is drawn over this set.')

    def reachable_ids(self, experts: int) -> np.ndarray:
        return np.arange(experts) if self.reachable_experts is None else parse_id_ranges(self.reachable_experts)


class WorkloadConfig(StrictModel):
    FIX_HINT: ClassVar[str] = "see the workload presets for working examples (`pathsim presets --kind workloads`)"
    name: str
    description: str = ""
    source: str = ""
    model: ModelSpec
    training: TrainingSpec
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    task_layout: Literal["mixed", "partitioned"] = Field(
        "mixed", description="mixed: every chip's batch mixes all tasks; partitioned: chips are split among tasks by share")
    tasks: list[TaskSpec] = Field(default_factory=lambda: [TaskSpec(name="default", share=1.0)], min_length=1)
    base_dir: str = Field("", exclude=True, description="folder that relative histogram files resolve against")

    @model_validator(mode="after")
    def _tasks_consistent(self) -> "WorkloadConfig":
        total = sum(t.share for t in self.tasks)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"task shares sum to {total:.6g}, not 1")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        moe = self.model.moe
        for i, task in enumerate(self.tasks):
            needs_moe = task.affinity is not None or task.routing.kind != "uniform"
            if moe is None and needs_moe:
                raise ValueError(f"tasks[{i}] ({task.name}) sets routing or affinity, but the model has no `moe:` section")
            if moe is None and task.reachable_experts is not None:
                raise ValueError(f"tasks[{i}] ({task.name}) sets reachable_experts, but the model has no `moe:` section")
            reach = None
            if task.reachable_experts is not None:
                reach = _checked_ids(lambda: task.reachable_ids(moe.experts), f"tasks[{i}].reachable_experts", moe.experts)
                if len(reach) < moe.top_k:
                    raise ValueError(f"tasks[{i}].reachable_experts lists {len(reach)} experts; top_k={moe.top_k} needs at least that many")
            if task.affinity is not None:
                ids = _checked_ids(task.affinity.expert_ids, f"tasks[{i}].affinity.experts", moe.experts)
                if reach is not None and np.setdiff1d(ids, reach).size:
                    raise ValueError(f"tasks[{i}].affinity.experts names expert {np.setdiff1d(ids, reach)[0]}, which is not among "
                                     f"the task's reachable_experts")
        if self.training.shard_gradients and not self.training.shard_optimizer:
            raise ValueError("training.shard_gradients (ZeRO-2) keeps each chip's gradient shard beside its optimizer "
                             "state shard: set training.shard_optimizer: true too, or shard_gradients: false")
        if self.training.tokens_per_step % self.training.micro_batches:
            raise ValueError(f"training.tokens_per_step ({self.training.tokens_per_step}) is not a multiple of "
                             f"training.micro_batches ({self.training.micro_batches})")
        model, par = self.model, self.parallelism
        if model.encoder_layers:
            per_micro_batch = self.training.tokens_per_step // self.training.micro_batches
            if per_micro_batch % model.seq_len:
                raise ValueError(f"training.tokens_per_step ({self.training.tokens_per_step}) over "
                                 f"{self.training.micro_batches} micro-batch(es) is not a whole number of {model.seq_len}-token "
                                 f"input sequences, which an encoder-decoder model's target tokens are counted from: "
                                 f"use a multiple of {model.seq_len * self.training.micro_batches}")
            for field, degree in (("pipeline", par.pipeline), ("context", par.context)):
                if degree > 1:
                    raise ValueError(f"parallelism.{field} ({degree}) is not modelled for encoder-decoder models (a stage or "
                                     f"context rank would need the encoder's output as well as its own inputs): set "
                                     f"parallelism.{field}: 1, or model.encoder_layers: 0")
        return self

    def decoder_tokens(self, tokens: int) -> int:
        """Target tokens of `tokens` input tokens (whole sequences) of an encoder-decoder model; `tokens` otherwise."""
        model = self.model
        return tokens // model.seq_len * model.target_len if model.encoder_layers else tokens

    @property
    def modalities(self) -> list[str]:
        return sorted({t.modality for t in self.tasks})


def _checked_ids(parse, field: str, experts: int) -> np.ndarray:
    try:
        ids = parse()
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    if ids.max() >= experts:
        raise ValueError(f"{field} names expert {ids.max()}, but the model has {experts} (ids 0..{experts - 1})")
    return ids


MAX_ID = 2**24  # expert and chip ids stay below this: 16.8 million, far above any published model or cluster


def parse_id_ranges(spec: "str | list[int]", what: str = "expert") -> np.ndarray:
    """'0-63,128-135' or [0, 5, 7] -> sorted unique int array of `what` ids (experts, chips)."""
    if isinstance(spec, list):
        ids = np.array(spec, dtype=np.int64)
    else:
        parts = []
        for piece in spec.replace(" ", "").split(","):
            if not piece:
                continue
            lo, sep, hi = piece.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise ValueError(f"{piece!r} is not {'an' if what[0] in 'aeiou' else 'a'} {what} id or range like 0-63")
            lo_i, hi_i = int(lo), int(hi) if sep else int(lo)
            if hi_i < lo_i:
                raise ValueError(f"range {piece!r} runs backwards")
            if hi_i >= MAX_ID:  # checked before the ids are made: '0-100000000000' would be 745 GiB of them
                raise ValueError(f"range {piece!r} names {what} {hi_i:,}, beyond any pathsim models (ids below {MAX_ID:,})")
            parts.append(np.arange(lo_i, hi_i + 1))
        ids = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    if ids.size == 0:
        raise ValueError(f"lists no {what}s")
    if ids.min() < 0:
        raise ValueError(f"{what} ids must be >= 0")
    if ids.max() >= MAX_ID:
        raise ValueError(f"names {what} {int(ids.max()):,}, beyond any pathsim models (ids below {MAX_ID:,})")
    return np.unique(ids)


def load_workload(spec: "str | Path | dict | WorkloadConfig") -> WorkloadConfig:
    """A WorkloadConfig from a preset name, a YAML path, a dict or a WorkloadConfig."""
    if isinstance(spec, WorkloadConfig):
        return spec
    config = load_config(WorkloadConfig, spec, "workloads",
                         lambda data, path: data.setdefault("base_dir", str(path.resolve().parent)))
    check_histograms(config, "<python dict>" if isinstance(spec, dict) else str(resolve_reference(spec, "workloads")))
    return config


def load_histogram(workload: WorkloadConfig, task_index: int, source: str = "<workload>") -> np.ndarray:
    """The task's measured routing as a (MoE layers × reachable experts) array of non-negative weights."""
    task = workload.tasks[task_index]
    field = f"tasks[{task_index}].routing.file"
    path = Path(task.routing.file)
    if not path.is_absolute() and workload.base_dir:
        path = Path(workload.base_dir) / path
    hist = read_numeric_array(path, source, field, "tokens per expert, one row per MoE layer")
    if hist.ndim == 1:
        hist = hist[None, :]
    experts = len(task.reachable_ids(workload.model.moe.experts))
    layers = len(workload.model.moe_layers)
    columns = "experts" if task.reachable_experts is None else "reachable experts"
    if hist.ndim != 2 or hist.shape[1] != experts or hist.shape[0] not in (1, layers):
        raise PathsimConfigError(source, field, f"{path.name} has shape {hist.shape}; expected ({layers}, {experts}) "
                                 f"(MoE layers × {columns}) or ({experts},)", f"export one row per MoE layer, one column per {columns[:-1]}")
    if not np.all(np.isfinite(hist)) or hist.min() < 0 or np.any(hist.sum(axis=1) <= 0):
        raise PathsimConfigError(source, field, f"{path.name} holds negative, non-finite or all-zero rows", "counts must be >= 0 with tokens in every row")
    return np.broadcast_to(hist, (layers, experts)).copy()


def check_histograms(workload: WorkloadConfig, source: str) -> None:
    for i, task in enumerate(workload.tasks):
        if task.routing.kind == "histogram":
            load_histogram(workload, i, source)


# ---- parallelism resolved against a cluster ----------------------------------------


class Layout(StrictModel):
    """Degrees resolved for one cluster. Rank c has tensor rank c % T and data rank c // T;
    data rank r belongs to expert group r // E_p at position r % E_p. Rank c runs on chip
    ``chip_of_rank[c]`` (the identity unless ``parallelism.axes_order`` reorders a torus)."""

    chips: int  # chips of one pipeline stage (all of them without pipelining): data × tensor
    tensor: int
    data: int  # ranks that split the batch's tokens: data replicas × context ranks (rank c: c // tensor)
    expert: int
    context: int = Field(1, description="context ranks: the `context` consecutive ones of `data` share each sequence")
    pipeline: int = Field(1, description="pipeline stages; stage s runs on chips shifted by s × chips (see for_stage)")
    stage: int = Field(0, description="the pipeline stage these ranks are")
    slices: int = Field(1, description="slices of a multi-slice cluster: data replicas span them, chips slice after slice")
    parameter_shards: int = Field(1, description="data-parallel ranks each dense parameter is sharded over (ZeRO-3 / FSDP: "
                                                 "those of one slice; 1: replicated)")
    chip_of_rank: tuple[int, ...] | None = None
    cluster_chips: int | None = Field(None, description="chips of the whole cluster when the ranks run on a part of it "
                                                         "(a job sharing a pod); None: the ranks fill the cluster")
    axes: dict[str, str] = Field(default_factory=dict, description="which topology axes each degree spans")
    expert_spans_tensor: bool = Field(False, description="expert groups are `expert` consecutive ranks (chips), not data ranks")
    expert_tensor: bool = Field(False, description="each expert's weights split over the tensor ranks of its data rank")

    def chip(self, ranks: np.ndarray) -> np.ndarray:
        """Physical chip ids of the given ranks (of this stage)."""
        base = np.asarray(self.chip_of_rank)[ranks] if self.chip_of_rank is not None else np.asarray(ranks)
        return base + self.stage * self.chips if self.stage else base

    # ---- rank arithmetic: the one place that knows how ranks are laid out -------------------------------------
    # Rank c is tensor rank c % tensor of data rank c // tensor; data rank r is (data replica r // context, context
    # rank r % context) and sits at position r % expert of expert group r // expert.

    def tensor_rank(self, ranks: np.ndarray) -> np.ndarray:
        return np.asarray(ranks) % self.tensor

    def data_rank(self, ranks: np.ndarray) -> np.ndarray:
        return np.asarray(ranks) // self.tensor

    @property
    def expert_member(self) -> int:
        """Ranks that make one member of an expert group: a data rank's tensor ranks (each the member of its own
        copy of the group), or with groups across the tensor ranks a single chip."""
        return 1 if self.expert_spans_tensor else self.tensor

    # Rank c is member m = c // u of the expert layout (u = expert_member) and copy index t = c % u inside it;
    # member m sits at position m % expert of group m // expert, and its t-th rank belongs to copy group·u + t.

    def expert_position(self, ranks: np.ndarray) -> np.ndarray:
        """Position in its expert group (which slice of the expert set the rank hosts)."""
        return (np.asarray(ranks) // self.expert_member) % self.expert

    def expert_copy(self, ranks: np.ndarray) -> np.ndarray:
        """Which copy of the expert set the rank dispatches to: expert group × tensor rank (or, with groups across
        the tensor ranks, its group)."""
        u, ranks = self.expert_member, np.asarray(ranks)
        return (ranks // u // self.expert) * u + ranks % u

    def rank_at(self, copy: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The rank at `position` of expert-set copy `copy` (the inverse of expert_copy and expert_position)."""
        u, copy, position = self.expert_member, np.asarray(copy), np.asarray(position)
        return ((copy // u) * self.expert + position) * u + copy % u

    def groups(self, kind: str) -> np.ndarray:
        """Physical chips of the concurrent groups a collective of this kind runs over, one group a row:
        ``tensor`` (a data rank's tensor ranks), ``data`` (every data rank of one tensor rank: dense gradients),
        ``shard`` (the data ranks of one slice: ZeRO-3), ``cross_slice`` (the same rank of every slice),
        ``context`` (the ranks sharing sequences), ``expert_copies`` (the same position in every expert-set copy)."""
        ranks = np.arange(self.chips)
        if kind == "tensor":
            grid = ranks.reshape(self.data, self.tensor)
        elif kind == "data":
            grid = ranks.reshape(self.data, self.tensor).T
        elif kind == "shard":
            slice_data = self.data // self.slices
            grid = ranks.reshape(self.slices, slice_data, self.tensor).transpose(0, 2, 1).reshape(-1, slice_data)
        elif kind == "cross_slice":
            grid = ranks.reshape(self.slices, -1).T
        elif kind == "context":
            c = self.context
            grid = ranks.reshape(self.data // c, c, self.tensor).transpose(0, 2, 1).reshape(-1, c)
        elif kind == "expert_copies":
            by_member = ranks.reshape(self.expert_groups, self.expert, self.expert_member)  # [group, position, copy index]
            if self.expert_tensor:  # a shard's copies: the same position and tensor rank of every expert group
                grid = by_member.transpose(1, 2, 0).reshape(-1, self.expert_groups)
            else:
                grid = by_member.transpose(1, 0, 2).reshape(self.expert, -1)
        else:
            raise ValueError(f"unknown group kind {kind!r}")
        return self.chip(grid)

    @property
    def total_chips(self) -> int:
        """Chips of all pipeline stages."""
        return self.chips * self.pipeline

    def for_stage(self, stage: int) -> "Layout":
        """The same layout on pipeline stage `stage`: the block of chips `stage` × chips on."""
        return self.model_copy(update={"stage": stage})

    def all_chips(self) -> np.ndarray:
        """Physical chips of every stage, stage after stage."""
        return np.concatenate([self.for_stage(s).chip(np.arange(self.chips)) for s in range(self.pipeline)])

    @property
    def physical_chips(self) -> int:
        """Chips of the topology the ranks' traffic is routed on."""
        return self.cluster_chips if self.cluster_chips is not None else self.chips

    @property
    def expert_groups(self) -> int:
        """Expert groups: of data ranks, each with a copy per tensor rank; or, across tensor ranks, of chips."""
        return self.chips // (self.expert_member * self.expert)

    @property
    def expert_spans_slices(self) -> bool:
        """True when an expert group's all-to-alls cross the DCN."""
        return self.expert * self.expert_member * self.slices > self.chips

    def tokens_per_chip(self, workload: "WorkloadConfig") -> float:
        """Tokens per micro-batch on one chip: a data rank's tokens split over its tensor ranks (sequence parallelism)."""
        return workload.training.tokens_per_step // workload.training.micro_batches / self.chips

    @property
    def expert_replication(self) -> int:
        """Copies of each expert set that tokens are dispatched to (one per expert group and tensor rank, or one per
        group across the tensor ranks)."""
        return self.expert_groups * self.expert_member

    @property
    def expert_shard(self) -> int:
        """Chips each expert's weights are split over at one position: the tensor ranks, with expert_tensor."""
        return self.tensor if self.expert_tensor else 1

    @property
    def expert_weight_copies(self) -> int:
        """Copies of each expert's weights (their gradients are summed over them; ZeRO-1 shards their state)."""
        return self.expert_replication // self.expert_shard


def check_pipeline(workload: WorkloadConfig, chips: int, source: str = "<workload>") -> int:
    """Chips of one pipeline stage, once the pipeline settings are checked against the model and the cluster."""
    par, model, training = workload.parallelism, workload.model, workload.training
    p, v = par.pipeline, par.virtual_stages
    if chips % p:
        fits = [d for d in range(1, min(chips, model.layers) + 1) if chips % d == 0]
        raise PathsimConfigError(source, "parallelism.pipeline", f"{chips} chips do not split into {p} equal stages",
                                 f"use a divisor of {chips} (e.g. {', '.join(map(str, fits[-4:]))})")
    if par.pipeline_schedule == "interleaved":
        if v < 2:
            raise PathsimConfigError(source, "parallelism.virtual_stages", "the interleaved schedule needs at least 2 "
                                     f"model chunks per stage, got {v}", "set virtual_stages: 2 or more")
        group = par.microbatch_group or p
        if group < p:
            # Stage 0's warm-up, 2(P−1) + (v−1)N chunks, needs the last stage's forwards of N chunks further on, which
            # wait behind a backward that waits for stage 0: a deadlock unless N ≥ P − 1 (Megatron-LM requires N ≥ P).
            raise PathsimConfigError(source, "parallelism.microbatch_group", f"a group of {group} micro-batches is "
                                     f"shorter than the {p} stages: the interleaved schedule would deadlock",
                                     f"use {p} (the default) up to {training.micro_batches}")
        if training.micro_batches % group:
            what = f"the {p} stages" if par.microbatch_group is None else f"parallelism.microbatch_group ({group})"
            raise PathsimConfigError(source, "training.micro_batches", f"the interleaved schedule needs micro-batches in "
                                     f"multiples of {what}, got {training.micro_batches}",
                                     f"use {group * max(1, round(training.micro_batches / group))}")
    elif par.pipeline_schedule == "dualpipe" and (p % 2 or training.micro_batches % 2 or training.micro_batches < 2 * p):
        what, fix = (("parallelism.pipeline", f"use an even number of stages ({p - 1} or {p + 1})") if p % 2 else
                     ("training.micro_batches", f"use an even number of at least {2 * p}"))
        raise PathsimConfigError(source, what, f"DualPipe runs half the micro-batches each way on an even number of "
                                 f"stages, at least two per stage: {p} stages, {training.micro_batches} micro-batches", fix)
    elif par.microbatch_group is not None:
        raise PathsimConfigError(source, "parallelism.microbatch_group", "applies to the interleaved schedule, not "
                                 f"{par.pipeline_schedule}", "set pipeline_schedule: interleaved or drop it")
    elif v > 1:
        raise PathsimConfigError(source, "parallelism.virtual_stages", f"model chunks per stage apply to the interleaved "
                                 f"schedule, not {par.pipeline_schedule}", "set pipeline_schedule: interleaved or virtual_stages: 1")
    if p == 1 and (v > 1 or par.stage_layers is not None):
        raise PathsimConfigError(source, "parallelism.virtual_stages" if v > 1 else "parallelism.stage_layers",
                                 "applies to a pipeline of 2 or more stages", "set parallelism.pipeline, or drop it")
    if p * v > model.layers and par.stage_layers is None:
        raise PathsimConfigError(source, "parallelism.pipeline", f"{p} stages × {v} chunks = {p * v} virtual stages for "
                                 f"{model.layers} layers: some would be empty", f"use at most {model.layers // v} stages")
    if par.stage_layers is not None and (len(par.stage_layers) != p * v or sum(par.stage_layers) != model.layers):
        raise PathsimConfigError(source, "parallelism.stage_layers", f"{len(par.stage_layers)} entries summing to "
                                 f"{sum(par.stage_layers)} layers; the pipeline has {p * v} virtual stages and the model "
                                 f"{model.layers} layers", f"give {p * v} counts summing to {model.layers}, or drop it")
    if par.stage_layers is not None:
        empty = [s for s in range(p) if not any(par.stage_layers[c * p + s] for c in range(v))]
        if empty:
            raise PathsimConfigError(source, "parallelism.stage_layers", f"stage {empty[0]} would hold no layer (chunk c of "
                                     f"stage s is entry c·{p} + s)", "give every stage at least one layer")
    return chips // p


def resolve_parallelism(workload: WorkloadConfig, chips: int, source: str = "<workload>",
                        torus_dims: tuple[int, ...] | None = None, slices: int = 1) -> Layout:
    """Degrees for a cluster of `chips` in `slices` equal slices (a torus, or a multi-slice cluster of tori,
    passes its slice's dims so ranks can follow `axes_order`).

    Tensor groups stay inside a slice; expert groups do too unless ``parallelism.expert``
    asks for more ranks than a slice holds; data replicas span the slices.
    """
    par = workload.parallelism
    slice_chips = chips // slices
    if par.context > 1:
        if workload.model.seq_len % par.context:
            raise PathsimConfigError(source, "parallelism.context", f"context degree {par.context} does not divide the "
                                     f"{workload.model.seq_len}-token sequence", "use a divisor of model.seq_len")
        if slice_chips % (par.tensor * par.context):
            raise PathsimConfigError(source, "parallelism.context", f"{slice_chips} chips per slice do not split into "
                                     f"tensor × context groups of {par.tensor * par.context}",
                                     f"use a context degree dividing {slice_chips // par.tensor}")
    if slice_chips % par.tensor:
        where = f"a slice's {slice_chips} chips" if slices > 1 else f"{chips} chips"
        raise PathsimConfigError(source, "parallelism.tensor", f"{where} do not split into tensor groups of {par.tensor}"
                                 + (" (tensor parallelism stays inside a slice)" if slices > 1 else ""),
                                 f"use a divisor of {slice_chips}")
    model = workload.model
    if par.tensor > 1 and (model.heads % par.tensor or model.d_model % par.tensor):
        raise PathsimConfigError(source, "parallelism.tensor", f"tensor degree {par.tensor} does not divide the model's "
                                 f"{model.heads} heads and d_model {model.d_model}", "use a common divisor of heads and d_model")
    data = chips // par.tensor  # data replicas × context ranks
    if par.data != "auto" and par.data * par.context != data:
        with_context = f" × context ({par.context})" if par.context > 1 else ""
        raise PathsimConfigError(source, "parallelism.data", f"data ({par.data}){with_context} × tensor ({par.tensor}) must "
                                 f"equal the {chips} chips", f"set data: {data // par.context} or data: auto")
    moe = workload.model.moe
    slice_data = data // slices
    # Expert groups are of data ranks, or with expert_spans_tensor of chips (ranks): `members` of them per slice.
    members, what = (chips // slices, "chips") if par.expert_spans_tensor else (slice_data, "data-parallel ranks")
    if par.expert == "auto":
        # One expert group spans every data-parallel rank of a slice (never the DCN), unless
        # there are fewer experts than ranks: then groups of (at most) one rank per expert.
        limit = members if moe is None else min(members, moe.experts)
        expert = max(d for d in range(1, limit + 1) if members % d == 0)
    else:
        expert = par.expert
    if (members * slices) % expert:
        raise PathsimConfigError(source, "parallelism.expert", f"expert degree {expert} does not divide the "
                                 f"{members * slices} {what}", f"use a divisor of {members * slices}")
    if expert > members and expert % members or expert < members and members % expert:
        raise PathsimConfigError(source, "parallelism.expert", f"expert groups of {expert} straddle the slices' "
                                 f"{members} {what} each", f"use a divisor or a multiple of {members}")
    if par.expert_spans_tensor and par.expert_tensor:
        raise PathsimConfigError(source, "parallelism.expert_tensor", "experts split over the tensor ranks cannot also have "
                                 "their groups span those ranks (expert_spans_tensor)", "set one of the two")
    if par.expert_spans_tensor and expert % par.tensor and par.tensor % expert:
        raise PathsimConfigError(source, "parallelism.expert", f"expert groups of {expert} chips across tensor groups of "
                                 f"{par.tensor} would split a tensor group between groups unevenly",
                                 f"use a multiple or a divisor of {par.tensor}")
    tokens = workload.training.tokens_per_step // workload.training.micro_batches
    if tokens < data:
        raise PathsimConfigError(source, "training.tokens_per_step", f"{tokens} tokens per micro-batch leave some of the {data} data-parallel ranks empty",
                                 "raise tokens_per_step or lower micro_batches")
    chip_of_rank, walk = None, None
    if torus_dims is not None:
        names = "xyz"[:len(torus_dims)]
        order = list(par.axes_order) if par.axes_order else list(reversed(names))
        if sorted(order) != sorted(names):
            raise PathsimConfigError(source, "parallelism.axes_order", f"must list each of the torus's axes {list(names)} once, got {order}",
                                     f"e.g. axes_order: {list(names)}")
        slow_to_fast = [names.index(a) for a in reversed(order)]
        grid = np.arange(slice_chips).reshape(torus_dims).transpose(slow_to_fast)
        if par.axes_order:
            chip_of_rank = tuple(int(c) for c in (grid.ravel()[None, :] + slice_chips * np.arange(slices)[:, None]).ravel())
        walk = [(a, torus_dims[names.index(a)]) for a in order]
    elif par.axes_order:
        raise PathsimConfigError(source, "parallelism.axes_order", "applies to torus clusters only", "remove it for this cluster")
    elif slices > 1:
        walk = [("chips", slice_chips)]
    if walk is not None and slices > 1:
        walk.append(("slices", slices))
    layout = Layout(chips=chips, tensor=par.tensor, data=data, expert=expert, context=par.context, slices=slices,
                    chip_of_rank=chip_of_rank, expert_spans_tensor=par.expert_spans_tensor, expert_tensor=par.expert_tensor,
                    parameter_shards=slice_data if workload.training.shard_parameters else 1)
    if walk is not None:
        if par.context > 1:  # expert groups (over data × context ranks) are left out of the picture
            degrees = [("tensor", par.tensor), ("context", par.context), ("data", data // par.context)]
        else:
            if moe is None:  # a dense model has no expert groups to show
                degrees = [("tensor", par.tensor), ("data", data)]
            elif par.expert_spans_tensor:
                degrees = [("expert (over tensor)", expert), ("data replicas", chips // expert)]
            else:
                degrees = [("tensor", par.tensor), ("expert", expert), ("data replicas", data // expert)]
        layout = layout.model_copy(update={"axes": _axes_spanned(walk, degrees)})
    return layout


def _axes_spanned(walk: list[tuple[str, int]], degrees: list[tuple[str, int]]) -> dict[str, str]:
    """Which axes (and how much of each) every degree covers as ranks walk the axes fastest-first."""
    out = {}
    axis, left = 0, walk[0][1] if walk else 1
    for name, size in degrees:
        parts = []
        while size > 1 and axis < len(walk):
            take = math.gcd(size, left)
            if take == 1:  # the degree does not tile this axis: it straddles it
                take = min(size, left)
            parts.append(f"{walk[axis][0]}({take}{'' if take == walk[axis][1] else ' of ' + str(walk[axis][1])})")
            size //= take
            left //= take
            if left == 1 and axis + 1 < len(walk):
                axis += 1
                left = walk[axis][1]
        out[name] = " x ".join(parts) if parts else "-"
    return out


# ---- dense counterpart --------------------------------------------------------------


def dense_counterpart(workload: WorkloadConfig, match: Literal["total_params", "active_flops"] = "active_flops") -> WorkloadConfig:
    """The same model with every MoE layer replaced by one dense FFN.

    ``active_flops``: the dense FFN does the work of the top-k routed (+ shared)
    experts, so FLOPs per token match. ``total_params``: the dense FFN holds as
    many parameters as all the experts together, so the parameter count matches.
    """
    model = workload.model
    if model.moe is None:
        return workload
    moe = model.moe
    shared_ffn = moe.shared_ffn or moe.expert_ffn
    if match == "active_flops":
        width = moe.top_k * moe.expert_ffn + moe.shared_experts * shared_ffn
    elif match == "total_params":
        width = moe.experts * moe.expert_ffn + moe.shared_experts * shared_ffn
    else:
        raise PathsimConfigError("<arguments>", "dense", f"unknown match {match!r}", "use active_flops or total_params")
    # FFN FLOPs and parameters are both linear in d_ff, so one width averaged
    # over the layers keeps the model's totals (to rounding) in a uniform stack.
    moe_share = len(model.moe_layers) / model.layers
    per_layer_ffn = round((1 - moe_share) * model.dense_ffn + moe_share * width)
    data = workload.model_dump(exclude={"base_dir"})
    data["name"] = f"{workload.name}-dense-{match.replace('_', '-')}"
    data["description"] = f"dense counterpart of {workload.name} ({match.replace('_', ' ')} matched)"
    data["model"]["moe"] = None
    data["model"]["dense_ffn"] = per_layer_ffn
    data["parallelism"]["expert"] = "auto"
    data["tasks"] = [dict(name=t.name, modality=t.modality, share=t.share) for t in workload.tasks]
    return validate_model(WorkloadConfig, data, f"<dense counterpart of {workload.name}>")
