"""What a placement must serve: the expected expert load of every MoE layer, and where it comes from.

Loads are expectations of the routing model (no batch noise; capacity
overflow already removed), so planners balance what the simulator will
route. Source demand stays low-rank: chips fall into a few classes with the
same task mix, so the demand of any set of rank positions on every expert is
``(chips of each class there) @ (kept assignments per class chip)``, never a
positions × experts matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from pathsim.routing import expected_sources

if TYPE_CHECKING:  # the run setup composes the planner, not the other way round
    from pathsim.run_setup import RunSetup


@dataclass(frozen=True)
class ExpertDemand:
    load: np.ndarray  # (moe layers, experts) kept assignments per micro-batch on one copy of the expert set
    class_kept: np.ndarray  # (moe layers, classes, experts) kept assignments one chip of each class sends
    position_classes: np.ndarray  # (positions, classes) source chips of each class at each rank position
    position_chip: np.ndarray  # (positions,) physical chip of each position (group 0, tensor rank 0)

    @property
    def layers(self) -> int:
        return self.load.shape[0]

    @property
    def experts(self) -> int:
        return self.load.shape[1]

    def from_positions(self, layer: int, positions: np.ndarray) -> np.ndarray:
        """(experts,) assignments that sources at these rank positions send to each expert."""
        return self.position_classes[positions].sum(axis=0) @ self.class_kept[layer]


def expected_demand(setup: RunSetup) -> ExpertDemand:
    layout, plan = setup.layout, setup.plan
    if plan is None:
        raise ValueError("expected_demand needs an MoE workload")
    ranks = np.arange(layout.chips)
    position = layout.expert_position(ranks)
    kept, class_of_rank = [], None
    for layer in range(setup.moe_layers):
        rows, row_of = expected_sources(plan, layer)
        kept.append(rows)
        class_of_rank = row_of
    class_kept = np.array(kept)
    classes = class_kept.shape[1]
    position_classes = np.bincount(position * classes + class_of_rank, minlength=layout.expert * classes)
    position_classes = position_classes.reshape(layout.expert, classes).astype(np.float64)
    per_copy = position_classes.sum(axis=0) @ class_kept / layout.expert_replication
    position_chip = layout.chip(layout.rank_at(0, np.arange(layout.expert)))  # the first copy's chip at each position
    return ExpertDemand(load=per_copy, class_kept=class_kept, position_classes=position_classes,
                        position_chip=np.asarray(position_chip))
