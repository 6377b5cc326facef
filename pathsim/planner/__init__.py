"""Expert placement planning: which experts, and which replicas of hot experts, go on which chips.

Stages: the expected expert load of a prepared run (:mod:`.demand`), the
slots it may use (:mod:`.constraints`), a policy that packs experts and their
copies onto ranks (:mod:`.policies`, built on :mod:`.packing`, :mod:`.eplb`
and :mod:`.search`). :mod:`pathsim.planning` reports and compares the
results with the simulator as the judge.
"""

from pathsim.planner.constraints import PlanOptions
from pathsim.planner.demand import ExpertDemand, expected_demand
from pathsim.planner.policies import POLICIES, place_experts, resolve_placement

__all__ = ["POLICIES", "ExpertDemand", "PlanOptions", "expected_demand", "place_experts", "resolve_placement"]
