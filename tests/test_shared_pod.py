"""Several jobs on one cluster: in-place runs on a part of the cluster, isolation, interference, bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import pathsim
from pathsim.cli import main
from pathsim.cluster import load_cluster
from pathsim.errors import PathsimConfigError
from pathsim.network import FastModel
from pathsim.run_setup import prepare_run
from pathsim.presets import preset_names
from pathsim.shared_pod import jobs_chips, load_shared_pod, simulate_shared
from pathsim.simulation import run_steps
from pathsim.topology import build_topology
from pathsim.workload import load_workload
from pathsim.yaml_config import resolve_reference
from tests.test_multi_slice import moe_workload, tpu_slices


def grad_bound_workload() -> dict:
    """A dense model with few tokens: its step is mostly the gradient all-reduce."""
    return {"name": "grad-bound", "model": {"layers": 2, "d_model": 1024, "heads": 8, "seq_len": 256, "vocab": 1024,
                                             "dense_ffn": 4096},
            "training": {"tokens_per_step": 4096, "grad_sync_overlap": False, "optimizer": "sgd"}}


def dumbbell_jobs(first: str, second: str) -> dict:
    return {"name": "dumbbell", "cluster": "example-dumbbell-8",
            "jobs": [{"name": "a", "workload": grad_bound_workload(), "chips": first},
                     {"name": "b", "workload": grad_bound_workload(), "chips": second}]}


def test_a_job_on_one_slice_runs_as_that_slice_alone():
    # The same workload on slice 1 of a 2-slice cluster and on a 1-slice cluster of the same slice: bit for bit.
    alone = pathsim.simulate(tpu_slices(1), moe_workload())
    setup = prepare_run(tpu_slices(2), moe_workload(), chips=np.arange(64, 128))
    part = run_steps(setup, 1)
    assert part.step_time.mean_s == alone.step_time.mean_s
    assert part.breakdown == alone.breakdown
    assert part.energy.inputs.chips == 64 and part.energy.inputs.hosts == 16  # its own chips, not the cluster's
    assert setup.layout.physical_chips == 128 and min(setup.layout.chip_of_rank) == 64


def test_a_job_on_the_whole_cluster_is_the_cluster_own_run():
    workload = moe_workload()
    workload["parallelism"]["axes_order"] = ["x", "y", "z"]  # torus-only options still apply
    shared = simulate_shared({"name": "one", "cluster": "tpu-v4-4x4x4", "jobs": [{"name": "a", "workload": workload, "chips": "0-63"}]})
    assert shared.jobs[0].step_time_shared_s == pathsim.simulate("tpu-v4-4x4x4", workload).step_time.mean_s


def test_jobs_on_separate_slices_are_isolated_exactly():
    result = simulate_shared({"name": "two", "cluster": tpu_slices(2),
                              "jobs": [{"name": "a", "workload": moe_workload(), "slices": [0]},
                                       {"name": "b", "workload": moe_workload(), "slices": [1]}]})
    assert result.converged and result.rounds == 0 and result.contended_links == []
    assert [job.slowdown for job in result.jobs] == [1.0, 1.0]
    assert result.jobs[0].step_time_shared_s == result.jobs[1].step_time_shared_s  # identical slices, identical jobs


def test_jobs_on_one_switch_each_share_no_link():
    result = simulate_shared(dumbbell_jobs("0-3", "4-7"))
    assert result.contended_links == [] and all(job.slowdown == 1.0 for job in result.jobs)


def test_jobs_across_the_trunk_slow_each_other_to_a_consistent_fixed_point():
    result = simulate_shared(dumbbell_jobs("0,1,4,5", "2,3,6,7"))
    assert result.converged and result.rounds >= 1
    a, b = result.jobs
    assert a.slowdown > 1.05 and a.slowdown == pytest.approx(b.slowdown, rel=1e-9)  # symmetric jobs
    trunk = [link for link in result.contended_links if "left -> right" in link.link or "right -> left" in link.link]
    assert trunk, "the trunk carries both jobs' rings"
    # Fixed point: each job, re-run alone on a trunk narrowed by the other's busy share, takes its shared time.
    topology = build_topology(load_cluster("example-dumbbell-8"))
    narrowed = topology.link_bandwidth.copy()
    for link in trunk:
        assert 0 < link.utilisation_by_job["b"] < 1
        narrowed[link.link_id] *= 1.0 - link.utilisation_by_job["b"]
    setup = prepare_run("example-dumbbell-8", grad_bound_workload(), chips=np.array([0, 1, 4, 5]))
    slim = topology.with_link_bandwidth(narrowed)
    rerun = run_steps(replace(setup, topology=slim, network=FastModel(slim)), 1)
    assert rerun.step_time.mean_s == pytest.approx(a.step_time_shared_s, rel=2e-3)


def test_bad_shared_pod_files_name_the_field(tmp_path):
    with pytest.raises(PathsimConfigError, match=r"jobs\[1\].*shares chip 3 with job 'a'"):
        simulate_shared(dumbbell_jobs("0-3", "3-5"))
    with pytest.raises(PathsimConfigError, match=r"jobs\[0\]\.chips.*names chip 9"):
        simulate_shared(dumbbell_jobs("0-9", "4-7"))
    with pytest.raises(PathsimConfigError, match=r"jobs\[0\]\.slices"):
        simulate_shared({"name": "x", "cluster": "example-dumbbell-8", "jobs": [{"name": "a", "workload": "switch-base-128", "slices": [0]}]})
    with pytest.raises(PathsimConfigError, match="exactly one of"):
        simulate_shared({"name": "x", "cluster": "example-dumbbell-8", "jobs": [{"name": "a", "workload": "switch-base-128"}]})
    two_slices = {"name": "x", "cluster": tpu_slices(2),
                  "jobs": [{"name": "a", "workload": moe_workload(), "chips": "32-95"}]}
    with pytest.raises(PathsimConfigError, match=r"jobs\[0\]\.chips.*parts of slices \[0, 1\]"):
        simulate_shared(two_slices)
    too_wide = {"name": "x", "cluster": "example-dumbbell-8",
                "jobs": [{"name": "wide", "workload": dict(grad_bound_workload(), parallelism={"tensor": 8}), "chips": "0-3"}]}
    with pytest.raises(PathsimConfigError, match=r"parallelism\.tensor.*job 'wide', jobs\[0\]"):
        simulate_shared(too_wide)
    with pytest.raises(PathsimConfigError, match="min_free_share"):
        simulate_shared(dumbbell_jobs("0-3", "4-7"), min_free_share=0.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncluster: tpu-v4-8x8x8\njobs:\n  - {name: a, workload: switch-base-128, chips: '0-511', extra: 1}\n")
    assert main(["share", str(bad)]) == 2


@pytest.mark.parametrize("name", preset_names("shared-pods"))
def test_every_shared_pod_preset_places_its_jobs(name):
    config = load_shared_pod(name)
    topology = build_topology(load_cluster(resolve_reference(config.cluster, "topologies")))
    chips = jobs_chips(config, topology, name)
    assert len(chips) == len(config.jobs) >= 2
    assert sum(len(c) for c in chips) <= topology.num_chips
    for job in config.jobs:
        load_workload(job.workload)


def test_share_cli_prints_every_job(capsys):
    assert main(["share", "two-jobs-own-slices-tpu-v4"]) == 0
    out = capsys.readouterr().out
    assert "switch-base-128" in out and "glam" in out and "isolated" in out
