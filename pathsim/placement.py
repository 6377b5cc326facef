"""Expert placement: which experts (and which replicas) each rank of an expert-parallel group hosts.

A placement is defined over the ranks of one expert-parallel group (every
group hosts the whole expert set, laid out the same way), per MoE layer: the
experts of different layers are different weights, and a layer's hot experts
are not the next layer's. A rank may host several experts, and an expert may
live on several ranks (replicas of a hot expert); tokens for a replicated
expert split evenly over its replicas (as in DeepSeek's EPLB). Placements
round-trip through JSON: ``pathsim plan --out`` writes them and
``pathsim simulate --placement FILE`` reads them.

The policies here need nothing but the group shape; the load- and
topology-aware ones live in :mod:`pathsim.planner`.
"""

from __future__ import annotations

import hashlib
import json

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import Field, PrivateAttr, StrictInt, model_validator

from pathsim.cluster import StrictModel
from pathsim.errors import PathsimConfigError
from pathsim.input_files import read_json
from pathsim.yaml_config import validate_model



class Placement(StrictModel):
    FIX_HINT: ClassVar[str] = "write placements with `pathsim plan --out PLACEMENT.json`; a hand edit must keep every field valid"
    policy: str = Field(description="how it was made: a policy name or 'file'")
    experts: int = Field(gt=0)
    ranks: int = Field(gt=0, description="ranks per expert-parallel group")
    slots: list[list[list[StrictInt]]] = Field(
        description="slots[l][r]: the expert ids rank r hosts in MoE layer l (replicas allowed); "
                    "a single entry applies to every MoE layer. A plain list of per-rank lists is read as one entry.")
    planned_for: dict[str, Any] = Field(default_factory=dict, description="what the planner was given (cluster, workload, seed, ...)")
    _shares: dict = PrivateAttr(default_factory=dict)

    def digest(self) -> str:
        """A fingerprint of what the placement places: `pathsim plan --out` records it, so a file edited since (by
        hand or by another tool) is told from the plan it started as."""
        content = json.dumps([self.experts, self.ranks, self.slots], separators=(",", ":"))
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    @model_validator(mode="before")
    @classmethod
    def _one_layer_shorthand(cls, data: Any) -> Any:
        slots = data.get("slots") if isinstance(data, dict) else None
        if isinstance(slots, list) and slots and isinstance(slots[0], list) and (not slots[0] or not isinstance(slots[0][0], list)):
            data = {**data, "slots": [slots]}
        return data

    @model_validator(mode="after")
    def _complete(self) -> "Placement":
        if not self.slots:
            raise ValueError("slots lists no MoE layer")
        for l, layer in enumerate(self.slots):
            where = f"MoE layer {l}: " if len(self.slots) > 1 else ""
            if len(layer) != self.ranks:
                raise ValueError(f"{where}slots lists {len(layer)} ranks, expected {self.ranks}")
            hosted = np.array([e for rank in layer for e in rank], dtype=np.int64)
            if hosted.size and (hosted.min() < 0 or hosted.max() >= self.experts):
                raise ValueError(f"{where}slots name expert ids outside 0..{self.experts - 1}")
            missing = np.setdiff1d(np.arange(self.experts), hosted)
            if missing.size:
                raise ValueError(f"{where}experts {missing[:8].tolist()}{'...' if missing.size > 8 else ''} are placed on no rank")
            for r, rank in enumerate(layer):
                if len(set(rank)) != len(rank):
                    raise ValueError(f"{where}slots[{r}] hosts the same expert twice")
        return self

    @property
    def layers(self) -> int:
        """Per-layer entries (1: one layout for every MoE layer)."""
        return len(self.slots)

    def layer(self, moe_layer: int) -> list[list[int]]:
        return self.slots[moe_layer if len(self.slots) > 1 else 0]

    @property
    def replicas(self) -> np.ndarray:
        """(entries × experts) copies of each expert in one group."""
        return np.array([np.bincount([e for rank in layer for e in rank], minlength=self.experts) for layer in self.slots])

    @property
    def experts_per_rank(self) -> np.ndarray:
        """(entries × ranks) expert slots each rank fills."""
        return np.array([[len(rank) for rank in layer] for layer in self.slots])

    def busiest_rank_slots(self, moe_layers: int, among: "list[int] | None" = None) -> int:
        """Expert slots, summed over the MoE layers (or only the MoE layers `among`, by index: a pipeline
        stage's), on the rank that hosts the most (what its HBM must hold)."""
        per_rank = self.experts_per_rank
        if len(per_rank) == 1:
            return int(per_rank.max()) * (moe_layers if among is None else len(among))
        return int((per_rank if among is None else per_rank[among]).sum(axis=0).max())

    def token_shares(self, moe_layer: int = 0) -> sp.csr_matrix:
        """(experts × ranks) fraction of each expert's tokens sent to each rank in one MoE layer; rows sum to 1."""
        key = moe_layer if len(self.slots) > 1 else 0
        if key not in self._shares:
            layer = self.slots[key]
            rank_of = np.array([r for r, rank in enumerate(layer) for _ in rank], dtype=np.int64)
            expert_of = np.array([e for rank in layer for e in rank], dtype=np.int64)
            share = 1.0 / np.bincount(expert_of, minlength=self.experts)[expert_of]
            self._shares[key] = sp.csr_matrix((share, (expert_of, rank_of)), shape=(self.experts, self.ranks))
        return self._shares[key]

    def check_layers(self, moe_layers: int, source: str) -> None:
        if self.layers not in (1, moe_layers):
            raise PathsimConfigError(source, "slots", f"placement has {self.layers} per-layer entries; the model has {moe_layers} MoE layers",
                                     "give one entry for every MoE layer, or a single one for all of them")


def round_robin(experts: int, ranks: int) -> Placement:
    """Expert e on rank e mod ranks; with more ranks than experts, rank r hosts expert r mod experts."""
    slots = [list(range(r, experts, ranks)) if ranks <= experts else [r % experts] for r in range(ranks)]
    return Placement(policy="round_robin", experts=experts, ranks=ranks, slots=[slots])


def contiguous(experts: int, ranks: int) -> Placement:
    """Blocks of consecutive experts per rank (the layout of GShard/DeepSpeed expert sharding)."""
    if ranks > experts:
        return round_robin(experts, ranks).model_copy(update={"policy": "contiguous"})
    bounds = np.linspace(0, experts, ranks + 1).round().astype(int)
    return Placement(policy="contiguous", experts=experts, ranks=ranks,
                     slots=[[list(range(bounds[r], bounds[r + 1])) for r in range(ranks)]])


def shape_only_placement(policy: str, experts: int, ranks: int) -> Placement:
    return {"round_robin": round_robin, "contiguous": contiguous}[policy](experts, ranks)


def read_placement(path: "str | Path") -> Placement:
    """A placement JSON file, validated (errors name the file and the field)."""
    path = Path(path)
    source = str(path)
    if path.suffix != ".json" or not path.exists():
        raise PathsimConfigError(source, "placement", "is neither a placement policy nor an existing .json file",
                                 "use a policy name (see `pathsim plan --help`) or a placement JSON written by `pathsim plan --out`")
    data = read_json(path, source, "", "a placement JSON written by `pathsim plan --out`")
    if not isinstance(data, dict):
        raise PathsimConfigError(source, "", "must hold a JSON object", "see pathsim.placement.Placement for the fields")
    placement = validate_model(Placement, data, source)
    if placement.planned_for.get("slots_digest") != placement.digest() and placement.policy != "file":
        # Not what the planner wrote (edited since, or written elsewhere): its policy name no longer describes it.
        label = f"file (edited from {placement.policy})" if "slots_digest" in placement.planned_for else "file"
        placement = placement.model_copy(update={"policy": label})
    return placement


def check_shape(placement: Placement, experts: int, ranks: int, moe_layers: int, source: str) -> Placement:
    """The placement, if it fits this run's expert count, group size and MoE layers."""
    if placement.experts != experts or placement.ranks != ranks:
        raise PathsimConfigError(source, "ranks" if placement.experts == experts else "experts",
                                 f"placement is for {placement.experts} experts on {placement.ranks} ranks; "
                                 f"this run has {experts} experts on expert-parallel groups of {ranks}",
                                 "re-plan for this workload and cluster, or set parallelism.expert to match")
    placement.check_layers(moe_layers, source)
    return placement
