"""The engine: ops on resources, their dependency graph and the SimPy executor that runs any such graph."""

from pathsim.engine.graph import COMPUTE, DCN, KINDS, NETWORK, Graph, Node, Op, Stream, resource_key
from pathsim.engine.run import Idle, Span, StepRun, run_graph

__all__ = ["COMPUTE", "DCN", "KINDS", "NETWORK", "Graph", "Idle", "Node", "Op", "Span", "StepRun", "Stream",
           "resource_key", "run_graph"]
