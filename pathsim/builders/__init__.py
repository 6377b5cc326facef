"""Builders turn a workload's step into a graph of ops for :mod:`pathsim.engine`: the training step
(data, tensor and expert parallelism) and its pipeline-parallel schedules."""
