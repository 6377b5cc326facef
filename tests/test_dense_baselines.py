"""Dense baselines: sharded parameters (ZeRO-3 / FSDP, PaLM's 2D sharding) and the PaLM presets.

Memory and the cross-slice gradient term are checked in closed form; the PaLM
540B preset against the throughput and utilisation the paper reports.
"""

from __future__ import annotations

import json

import pytest

import pathsim
from pathsim.errors import PathsimConfigError
from pathsim.model_math import layer_params
from pathsim.model_math import model_totals
from pathsim.run_setup import prepare_run
from pathsim.step_ops import DCN, NETWORK, StepCoster
from tests.test_multi_slice import moe_workload, tpu_slices


def dense_workload(shard: bool = True, tensor: int = 4, layers: int = 6) -> dict:
    return {
        "name": "tiny-dense",
        "model": {"layers": layers, "d_model": 2048, "heads": 16, "seq_len": 1024, "vocab": 32000, "dense_ffn": 8192},
        "training": {"tokens_per_step": 2**19, "shard_parameters": shard, "optimizer": "adam"},
        "parallelism": {"tensor": tensor},
    }


def test_sharded_parameters_hold_a_shard_plus_two_gathered_layers():
    plain, sharded = (prepare_run(tpu_slices(2), dense_workload(shard)) for shard in (False, True))
    assert (plain.layout.parameter_shards, sharded.layout.parameter_shards) == (1, 16)  # 64 chips / tensor 4 per slice
    a = pathsim.simulate(tpu_slices(2), dense_workload(False)).memory
    b = pathsim.simulate(tpu_slices(2), dense_workload(True)).memory
    model = sharded.workload.model
    dense = sum(layer_params(model, i) for i in range(model.layers + 1)) / 4  # per tensor rank
    largest = max(layer_params(model, i) for i in range(model.layers + 1)) / 4
    assert a.parameters_bytes == pytest.approx(dense * 2, rel=1e-12)
    assert b.gradients_bytes == pytest.approx(dense / 16 * 2, rel=1e-12)
    assert b.parameters_bytes == pytest.approx((dense / 16 + 2 * largest) * 2, rel=1e-12)
    assert b.optimizer_bytes == a.optimizer_bytes  # ZeRO-1 already shards Adam's state over all 32 data ranks


def test_sharded_gradients_are_the_shard_a_chip_updates_and_need_a_sharded_optimizer():
    """ZeRO-2: a chip keeps the gradients of the parameters whose optimizer state it holds (Adam: 12 bytes of
    state per parameter, so gradients in bf16 are 2/12 of it); nothing else changes, the step time included."""
    whole = dense_workload(shard=False)
    sharded = json.loads(json.dumps(whole))
    sharded["training"]["shard_gradients"] = True
    a, b = (pathsim.simulate(tpu_slices(1), w) for w in (whole, sharded))
    assert b.memory.gradients_bytes == pytest.approx(b.memory.optimizer_bytes * 2 / 12, rel=1e-12)
    assert b.memory.gradients_bytes == pytest.approx(a.memory.gradients_bytes / 16, rel=1e-12)  # 16 data ranks
    assert a.memory.total_bytes - b.memory.total_bytes == pytest.approx(a.memory.gradients_bytes * 15 / 16, rel=1e-12)
    assert (b.step_time.mean_s, b.memory.parameters_bytes) == (a.step_time.mean_s, a.memory.parameters_bytes)
    assert "ZeRO-2" in b.memory.note and "ZeRO-2" not in a.memory.note
    sharded["training"]["shard_optimizer"] = False
    with pytest.raises(PathsimConfigError, match="shard_optimizer: true") as err:
        pathsim.simulate(tpu_slices(1), sharded)
    assert "training.shard_gradients" in str(err.value)


def test_every_layer_is_gathered_before_its_forward_and_its_backward(tmp_path):
    layers = 6
    result = pathsim.simulate(tpu_slices(1), dense_workload(layers=layers), trace=tmp_path / "t.json", detail=True)
    names = [e["args"]["op"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"]
             if e.get("ph") == "X" and "op" in e["args"]]  # the op's full name (the trace's own drops the layer)
    gathers = [n for n in names if "weight all-gather" in n and not n.endswith("(exposed)")]
    # Forward: every layer and the head; backward: every layer (the head's weights are still held).
    assert sorted(gathers) == sorted([f"L{i} weight all-gather fwd" for i in range(layers)] + ["LM head weight all-gather fwd"]
                                     + [f"L{i} weight all-gather bwd" for i in range(layers)])
    first = next(s for s in result.detail.timeline if s.name == "L0 weight all-gather fwd")
    # Prefetched a layer ahead: only what compute could not hide is on the critical path, at least the first gather.
    assert first.end_s - first.start_s <= result.breakdown.weight_gather_s < result.communication.weight_gather_s
    assert result.breakdown.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert pathsim.simulate(tpu_slices(1), dense_workload(shard=False)).communication.weight_gather_s == 0.0


def test_sharded_gradients_reduce_scatter_in_the_slice_and_all_reduce_the_shard_over_the_dcn():
    setup = prepare_run(tpu_slices(2, latency=False), dense_workload())
    coster = StepCoster(setup.workload, setup.layout, setup.topology, setup.network, setup.device, None)
    chains = coster.grad_sync(2)
    assert chains and all([op.resource for op in chain] == [NETWORK, DCN] for chain in chains)
    bucket = coster.layer_dense_params(2) * 2 / len(chains)
    # The 16-way shard of each bucket, ring all-reduced over 2 slices (2(p-1)/p = 1) through NICs of 4 chips each.
    assert chains[0][1].duration_s == pytest.approx(bucket / 16 * 4 / 6.6e9, rel=1e-12)
    one_slice = prepare_run(tpu_slices(1), dense_workload())
    coster = StepCoster(one_slice.workload, one_slice.layout, one_slice.topology, one_slice.network, one_slice.device, None)
    assert all([op.resource for op in chain] == [NETWORK] for chain in coster.grad_sync(2))


def test_waits_behind_weight_gathers_are_booked_as_weight_gather_not_gradient_sync():
    workload = dense_workload()
    workload["training"]["grad_sync_overlap"] = False  # gradients start after the backward pass: none can be hidden
    workload["training"]["tokens_per_step"] = 2**15  # little compute per layer: the prefetch cannot hide the gathers
    result = pathsim.simulate(tpu_slices(2), workload, detail=True)
    waited = sum(s.waited_s for s in result.detail.timeline if s.stream == "main")
    assert waited > 0  # tensor all-reduces queue behind the next layer's prefetched gather
    b = result.breakdown
    assert b.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert result.communication.grad_sync_hidden_s == pytest.approx(0.0, abs=1e-12)
    assert b.grad_sync_exposed_s == pytest.approx(result.communication.grad_sync_s, rel=1e-9)  # wall time, not op time
    assert b.weight_gather_s >= waited  # no bucket is in flight during backward: every wait was behind a gather


def test_tied_embeddings_count_the_vocabulary_matrix_once():
    untied = pathsim.load_workload("palm-540b").model.model_copy(update={"tied_embeddings": False})
    tied = pathsim.load_workload("palm-540b").model
    difference = model_totals(untied).total_params - model_totals(tied).total_params
    assert difference == tied.vocab * tied.d_model
    assert model_totals(untied).forward_flops_per_token == model_totals(tied).forward_flops_per_token


def test_palm_540b_on_its_two_pods_is_near_the_published_run():
    result = pathsim.simulate("tpu-v4-palm-2pods", "palm-540b")
    assert result.total_params == pytest.approx(540.35e9, rel=1e-3)  # PaLM Table 1
    assert (result.parallelism["data"], result.parallelism["tensor"], result.parallelism["slices"]) == (512, 12, 2)
    assert result.parallelism_axes["tensor"] == "x(12)"
    assert result.memory.fits
    # PaLM Sec. 4.1: 238.3K tokens/s, MFU 46.2 %, HFU 57.8 %. pathsim runs attention and FFN in series
    # (no parallel-layer fusion), so it may be slower, not faster, by about that fusion's 15 %.
    assert 0.80 * 238.3e3 < result.tokens_per_s < 1.02 * 238.3e3
    assert abs(result.mfu - 0.462) < 0.05
    # Full rematerialisation re-runs every layer's forward (4/3 of the model FLOPs), but not the LM head's.
    assert 1.32 < result.hfu / result.mfu < 4 / 3
    # The cross-pod gradient transfer hides behind backward, and the weight gathers behind the layer before.
    assert result.breakdown.grad_sync_exposed_s < 0.01 * result.step_time.mean_s
    assert result.breakdown.weight_gather_s < 0.05 * result.step_time.mean_s


@pytest.mark.parametrize("slices, kind, shard, overlap",
                         [(s, k, sh, o) for s in (1, 2) for k in ("dense", "moe", "moe-across") for sh in (False, True)
                          for o in (True, False) if not (k == "moe-across" and s == 1)])
def test_the_breakdown_adds_up_to_the_step_whatever_overlaps(slices, kind, shard, overlap):
    workload = dense_workload(shard=shard) if kind == "dense" else moe_workload(expert=128 if kind == "moe-across" else "auto")
    workload["training"].update(shard_parameters=shard, grad_sync_overlap=overlap, micro_batches=2)
    result = pathsim.simulate(tpu_slices(slices), workload, steps=2)
    b, c = result.breakdown, result.communication
    assert b.total_s() == pytest.approx(result.step_time.mean_s, rel=1e-9)
    assert min(b.model_dump().values()) >= 0
    assert 0 <= c.grad_sync_hidden_s <= c.grad_sync_s
    assert b.weight_gather_s <= c.weight_gather_s + 1e-12 and (shard or c.weight_gather_s == 0)
