"""Network models: how long a phase of traffic takes on a topology.

Two fidelities behind one interface (``phase(traffic) -> PhaseTiming``) that
check each other: ``fast`` (bytes per link → the most loaded link) and
``fluid`` (flow-level max-min fair sharing). ``get_model(name, topology)``
picks one by name.
"""

from __future__ import annotations

from pathsim.network.fast import FastModel
from pathsim.network.fluid import FluidModel
from pathsim.network.timing import NetworkModel, PhaseTiming
from pathsim.topology.base import Topology

MODELS = {"fast": FastModel, "fluid": FluidModel}


def get_model(name: str, topology: Topology) -> NetworkModel:
    try:
        return MODELS[name](topology)
    except KeyError:
        raise ValueError(f"unknown network model {name!r}; choose one of {sorted(MODELS)}") from None


__all__ = ["FastModel", "FluidModel", "MODELS", "NetworkModel", "PhaseTiming", "get_model"]
