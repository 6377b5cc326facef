"""What a placement may use: expert slots per chip (HBM), a replica budget, experts that must stay together.

Every infeasible request stops with a PathsimConfigError naming the
constraint and what would fit, never a placement that silently overflows.
"""

from __future__ import annotations

from typing import ClassVar, TYPE_CHECKING

import math
from dataclasses import dataclass

import numpy as np
from pydantic import Field, StrictInt, model_validator

from pathsim.cluster import StrictModel
from pathsim.errors import PathsimConfigError
from pathsim.memory import memory_per_chip
from pathsim.units import format_bytes

if TYPE_CHECKING:  # the run setup composes the planner, not the other way round
    from pathsim.run_setup import RunSetup


class PlanOptions(StrictModel):
    FIX_HINT: ClassVar[str] = "see `pathsim plan --help`"
    replicas: StrictInt | None = Field(None, ge=0, description="extra expert copies per MoE layer and expert-parallel group "
                                       "(default: none beyond what fills every rank's slots evenly)")
    together: list[list[StrictInt]] = Field(default_factory=list, description="sets of expert ids that must share a chip")
    eplb_groups: StrictInt = Field(1, gt=0, description="EPLB: expert groups of group-limited routing (DeepSeek-V3: 8); "
                                   "1, the default, is EPLB's global policy")
    eplb_nodes: StrictInt | None = Field(None, gt=0, description="EPLB nodes per expert-parallel group (default: the fat tree's servers, 1 on a torus)")
    time_budget_s: float | None = Field(None, gt=0, allow_inf_nan=False,
                                        description="search: wall-clock limit; none by default, so the evaluation budget "
                                                    "stops the search and the same inputs give the same placement on any machine")
    max_evaluations: StrictInt = Field(2000, gt=0, description="search: placements evaluated at most (binds first for reproducible plans)")
    enforce_hbm: bool = Field(True, description="refuse placements that overflow HBM (simulate turns this off to report the verdict)")

    @model_validator(mode="after")
    def _disjoint(self) -> "PlanOptions":
        seen: set[int] = set()
        for group in self.together:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"together group {group} must list at least two distinct expert ids")
            if seen & set(group):
                raise ValueError(f"expert {sorted(seen & set(group))[0]} is in two together groups; merge them")
            seen |= set(group)
        return self


@dataclass(frozen=True)
class SlotBudget:
    """Items to place (an expert, or a together group as one item) and the slots available per layer."""

    item_members: list[list[int]]  # expert ids of each item
    physical_slots: int  # expert slots filled per MoE layer and group (experts + replicas)
    slots_per_rank: int  # at most, per MoE layer
    replicas_requested: int
    note: str

    @property
    def item_sizes(self) -> np.ndarray:
        return np.array([len(m) for m in self.item_members])

    def item_weights(self, expert_load: np.ndarray) -> np.ndarray:
        return np.array([expert_load[m].sum() for m in self.item_members])


def _memory_for(setup: RunSetup, slots_per_rank: int):
    return memory_per_chip(setup.workload, setup.layout, slots_per_rank * setup.moe_layers, setup.cluster.chip.hbm_bytes)


def slot_budget(setup: RunSetup, options: PlanOptions, source: str = "<arguments>") -> SlotBudget:
    experts, ranks = setup.workload.model.moe.experts, setup.layout.expert
    members = [sorted(g) for g in options.together]
    bad = [e for g in members for e in g if not 0 <= e < experts]
    if bad:
        raise PathsimConfigError(source, "together", f"expert id {bad[0]} is outside 0..{experts - 1}", "name experts of this workload")
    grouped = {e for g in members for e in g}
    items = members + [[e] for e in range(experts) if e not in grouped]
    requested = options.replicas or 0
    most = sum(len(m) for m in items) * (ranks - 1)
    if requested > most:
        raise PathsimConfigError(source, "replicas", f"{requested} replicas would put some expert twice on a rank of the {ranks}",
                                 f"at most {most}: one copy of every expert on every rank")
    physical = experts + requested
    notes = []
    if physical < ranks:
        notes.append(f"{ranks - physical} more replicas than requested so every one of the {ranks} ranks hosts an expert")
        physical = ranks
    per_rank = math.ceil(physical / ranks)
    widest = max(len(m) for m in items)
    if widest > per_rank:
        per_rank = widest
        notes.append(f"{widest} slots per rank to keep the largest together group on one chip")
    memory = _memory_for(setup, per_rank)
    if options.enforce_hbm and not memory.fits:
        fits = max((s for s in range(1, per_rank) if _memory_for(setup, s).fits), default=0)
        what = (f"{per_rank} expert slots per chip per MoE layer need {format_bytes(memory.total_bytes)} of "
                f"{format_bytes(memory.hbm_bytes)} HBM")
        if fits * ranks >= experts and fits >= widest:
            fix = f"at most {fits * ranks - experts} replicas fit ({fits} slots per chip)"
        else:
            fix = "no placement fits: use more chips, recompute: full, or a smaller model"
        raise PathsimConfigError(source, "replicas" if requested else "hbm", what, fix)
    return SlotBudget(item_members=items, physical_slots=physical, slots_per_rank=per_rank,
                      replicas_requested=requested, note="; ".join(notes))
