"""Energy of a step: the chip-state timeline, conservation of energy over it, and the power inputs."""

import math

import numpy as np
import pytest
import yaml

from pathsim import simulate
from pathsim.cli import main
from pathsim.cluster import load_cluster
from pathsim.energy import STATES, ChipActivity, StateTimeline, power_inputs, power_timeline, state_timeline, step_energy
from pathsim.engine import Span
from pathsim.step_ops import COMPUTE, NETWORK, Op
from pathsim.topology import build_topology


def _span(resource, start, end, straggler=0.0):
    op = Op("op", "compute" if resource == COMPUTE else "all_to_all", resource, end - start, straggler_s=straggler)
    return Span(op, "main", start, end)


def test_state_timeline_closed_form():
    # compute 0–2 with 0.5 s of straggler tail, network 1–3, compute 4–5, step ends at 6
    spans = [_span(COMPUTE, 0, 2, straggler=0.5), _span(NETWORK, 1, 3), _span(COMPUTE, 4, 5)]
    timeline = state_timeline(spans, 6.0)
    assert timeline.boundaries_s.tolist() == [0, 1.5, 3, 4, 5, 6]
    assert [STATES[s] for s in timeline.states] == ["compute", "communication", "idle", "compute", "idle"]
    assert timeline.seconds() == {"compute": 2.5, "communication": 1.5, "idle": 2.0}


def test_state_timeline_of_nothing_is_idle():
    timeline = state_timeline([], 2.0)
    assert timeline.seconds() == {"compute": 0.0, "communication": 0.0, "idle": 2.0}


CASES = [("tpu-v4-4x4x4", "switch-base-128", None), ("dgx-h100-4", "mixtral-8x7b", None),
         ("tpu-v3-4x4", "switch-base-128", "active_flops"), ("tpu-v5p-4x4x4", "pathways-multitask", None)]


@pytest.mark.parametrize("cluster,workload,dense", CASES)
def test_power_timeline_integrates_to_the_reported_energy(cluster, workload, dense):
    result = simulate(cluster, workload, steps=1, dense=dense, detail=True)
    detail, energy = result.detail, result.energy
    boundaries = np.array(detail.state_boundaries_s)
    assert boundaries[0] == 0 and math.isclose(boundaries[-1], result.step_time.mean_s, rel_tol=1e-12)
    assert np.all(np.diff(boundaries) > 0)
    # Σ power × time over the timeline = the reported IT energy.
    timeline = StateTimeline(boundaries, np.array([STATES.index(s) for s in detail.states]))
    edges, watts = power_timeline(timeline, energy.inputs)
    assert math.isclose(float(np.sum(watts * np.diff(edges))), energy.it_j(), rel_tol=1e-9)
    # The chips' part in closed form: idle power all step, plus the swing while computing or communicating.
    p, a = energy.inputs, energy.activity
    swing = p.chip_peak_w - p.chip_idle_w
    chips_j = p.chips * (p.chip_idle_w * result.step_time.mean_s + swing * (a.compute_s + p.communication_activity * a.communication_s))
    assert math.isclose(energy.chips_j, chips_j, rel_tol=1e-9)
    # Busy compute time is every compute op's length less its straggler tail (one op at a time on the compute stream).
    busy = sum(s.end_s - s.start_s - s.straggler_s for s in detail.timeline if s.resource == COMPUTE)
    assert math.isclose(a.compute_s, busy, rel_tol=1e-9)
    assert math.isclose(a.compute_s + a.communication_s + a.idle_s, result.step_time.mean_s, rel_tol=1e-9)


def test_energy_of_several_steps_is_that_of_the_mean_step():
    result = simulate("tpu-v4-4x4x4", "pathways-multitask", steps=3, seed=0)
    assert len(set(result.step_time.per_step_s)) > 1  # skewed routing: the steps differ
    a, p = result.energy.activity, result.energy.inputs
    assert math.isclose(a.compute_s + a.communication_s + a.idle_s, result.step_time.mean_s, rel_tol=1e-12)
    assert math.isclose(result.energy.hosts_j, p.hosts * p.host_w * result.step_time.mean_s, rel_tol=1e-12)


def test_hosts_and_network_power_are_counted_from_the_topology():
    cluster = load_cluster("dgx-h100-32")
    topology = build_topology(cluster)
    inputs = power_inputs(cluster, topology)
    assert inputs.hosts == 32 and inputs.host_w == cluster.host.power
    assert inputs.network_switches == topology.n_leaves + topology.n_spines == 12  # 1 SU: 8 rail leaves + 4 spines
    assert inputs.network_w() == 12 * cluster.network_power.per_switch + 256 * cluster.network_power.per_chip
    activity = ChipActivity(compute_s=1.0, communication_s=0.0, idle_s=1.0)
    energy = step_energy(activity, inputs)
    assert energy.network_j == inputs.network_w() * 2.0 and energy.hosts_j == 32 * cluster.host.power * 2.0


def test_every_preset_gives_its_network_power_a_source():
    from pathsim.presets import preset_names
    for name in preset_names("topologies"):
        cluster = load_cluster(name)
        assert cluster.network_power is not None and cluster.network_power.source, name


@pytest.mark.parametrize("field,value,named", [
    (("chip", "idle_power"), "-5W", "chip.idle_power"),
    (("chip", "communication_activity"), 1.5, "chip.communication_activity"),
    (("network_power", "per_switch"), "-1kW", "network_power.per_switch"),
    (("host", "power"), "lots", "host.power"),
])
def test_bad_power_fields_exit_2_naming_the_field(tmp_path, capsys, field, value, named):
    data = {"extends": "tpu-v4-4x4x4", field[0]: {field[1]: value}}
    if field[0] == "network_power":
        data["network_power"]["source"] = "test"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["simulate", "--cluster", str(path), "--workload", "switch-base-128"]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
