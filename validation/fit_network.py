"""Fit the achieved shares of link bandwidth (``links.<class>.efficiency``, ``all_to_all_efficiency`` and
``in_switch_efficiency``) to the suite's nccl-tests entries (and TPU v5e's ICI share to the JAX scaling book's
AllGather), and per-hop latencies (``links.<class>.latency``) to its latency-bound collective times.

For a large buffer a collective's bus bandwidth is its bottleneck links' bandwidth, so measured / predicted at
efficiency 1 is the share the library reaches on those links. One share per link technology, whatever the chip:
NVLink (NCCL's ring protocol inside a node: one-node all-reduce rings, all-gathers and reduce-scatters) and the
InfiniBand NIC (multi-node all-reduces, bound by the nodes' NICs); and, apart, what NCCL's all-to-all (concurrent
peer-to-peer sends) reaches on each: one-node all-to-alls for NVLink, multi-node ones for the NIC; and what NVLink
SHARP's in-switch all-reduce (NVLS) reaches, from its one entry. Prints each entry's ratio, the fit (geometric mean)
and a leave-one-out check: each entry predicted from the others (NVLS, measured once, by the model without it).

    python validation/fit_network.py
"""

from __future__ import annotations

import numpy as np

from pathsim.cluster import load_cluster
from pathsim.collectives import run_collective
from pathsim.fidelity import suite_entries

FITTED = {  # (link class, share) fitted -> the entries that measure it
    ("nvlink", "efficiency"): ["nccl-a100-node-all-reduce", "nccl-a100-node-all-reduce-azure",
                               "nccl-h100-node-all-reduce-ring", "nccl-h200-node-all-gather", "nccl-h200-node-reduce-scatter"],
    ("nic", "efficiency"): ["nccl-a100-4node-all-reduce", "nccl-h100-4node-all-reduce"],
    ("nvlink", "all_to_all_efficiency"): ["nccl-a100-node-all-to-all", "nccl-h100-node-all-to-all"],
    ("nic", "all_to_all_efficiency"): ["nccl-a100-4node-all-to-all", "nccl-h100-4node-all-to-all"],
    ("nvlink", "in_switch_efficiency"): ["nccl-h100-node-all-reduce-nvls"],
    # TPU v5e's ICI: the scaling book's large AllGather over a wrapped 16-chip axis (its only measured bandwidth).
    ("ici", "efficiency"): ["scaling-book-v5e-8x16-all-gather"],
}
# Per-hop latency (links.<class>.latency) fitted to one latency-bound collective time, checked on another; held
# out, the fitted entry is predicted with the latency assumed before the fit.
LATENCY_FITTED = {"ici": ("scaling-book-v5e-8x4-all-gather-128kib", ["scaling-book-v5e-8x16-all-gather-128kb"])}
ASSUMED_LATENCY_S = {"ici": 1e-6}  # the JAX scaling book's "typically around 1 us" per hop


def at_full_efficiency(cluster: str):
    config = load_cluster(cluster)
    links = {name: spec.model_copy(update={"efficiency": 1.0, "all_to_all_efficiency": None,
                                           "in_switch_efficiency": None if spec.in_switch_efficiency is None else 1.0})
             for name, spec in config.links.items()}
    return config.model_copy(update={"links": links})


def fits() -> list[tuple[str, str, list[str], np.ndarray, float, dict[str, float]]]:
    """Per fitted share: (link class, share, its entries, their measured / predicted-at-efficiency-1 ratios, the fit,
    each entry's leave-one-out error: predicted from the others' fit / measured − 1)."""
    entries = {e.name: e for e in suite_entries(slow=True)}
    out = []
    for (link, share), names in FITTED.items():
        ratios = []
        for name in names:
            e = entries[name]
            spec = e.collective
            full = run_collective(at_full_efficiency(e.cluster), spec.op, spec.bytes, groups=spec.groups,
                                  algorithm=spec.algorithm)
            ratios.append(e.measured / (full.busbw_bytes_per_s / 1e9))
        ratios = np.array(ratios)
        fit = float(np.exp(np.log(ratios).mean()))
        # Held out, an entry is predicted by the others' fit; a share only one entry measures has no other fit, and
        # the model without it is the one before the share existed (for the in-switch share: NCCL's rings).
        if len(names) > 1:
            held_out = {name: float(np.exp(np.log(np.delete(ratios, k)).mean())) / ratios[k] - 1
                        for k, name in enumerate(names)}
        else:
            e = entries[names[0]]
            config = load_cluster(e.cluster)
            unset = 1.0 if share == "efficiency" else None  # (the model before the share was fitted)
            links = {**config.links, link: config.links[link].model_copy(update={share: unset})}
            spec = e.collective
            alone = run_collective(config.model_copy(update={"links": links}), spec.op, spec.bytes, groups=spec.groups,
                                   algorithm=spec.algorithm)
            held_out = {names[0]: alone.busbw_bytes_per_s / 1e9 / e.measured - 1}
        out.append((link, share, names, ratios, fit, held_out))
    return out


def _with_latency(cluster: str, link: str, latency_s: float):
    config = load_cluster(cluster)
    links = {**config.links, link: config.links[link].model_copy(update={"latency": latency_s})}
    return config.model_copy(update={"links": links})


def _time_s(entry, cluster) -> float:
    spec = entry.collective
    return run_collective(cluster, spec.op, spec.bytes, groups=spec.groups, algorithm=spec.algorithm).time_s


def latency_fits() -> list[tuple[str, str, float, dict[str, float]]]:
    """Per link class: (class, the entry fitted, the per-hop latency that makes its predicted time the measured one,
    each checking entry's error with that latency, and the fitted entry's with the latency assumed before:
    predicted / measured − 1). A collective's time is linear in
    the per-hop latency (bandwidth time plus hops × latency), so two evaluations solve it."""
    entries = {e.name: e for e in suite_entries(slow=True)}
    out = []
    for link, (fitted, checks) in LATENCY_FITTED.items():
        e = entries[fitted]
        at_zero, at_one = (_time_s(e, _with_latency(e.cluster, link, t)) for t in (0.0, 1e-6))
        latency = (e.measured * 1e-6 - at_zero) / (at_one - at_zero) * 1e-6
        errors = {name: _time_s(entries[name], _with_latency(entries[name].cluster, link, latency)) * 1e6
                  / entries[name].measured - 1 for name in checks}
        errors[fitted] = _time_s(e, _with_latency(e.cluster, link, ASSUMED_LATENCY_S[link])) * 1e6 / e.measured - 1
        out.append((link, fitted, latency, errors))
    return out


def main() -> None:
    entries = {e.name: e for e in suite_entries(slow=True)}
    for link, share, names, ratios, fit, held_out in fits():
        for name, ratio in zip(names, ratios):
            print(f"{link:7s} {name:34s} measured {entries[name].measured:7.1f}  at efficiency 1: "
                  f"{entries[name].measured / ratio:7.1f}  ratio {ratio:.4f}")
        print(f"{link}: {share} {fit:.3f} (geometric mean of {len(ratios)}; spread {ratios.min():.3f}-{ratios.max():.3f})")
        for name in names:
            print(f"    leave-one-out {name:34s} predicted / measured - 1 = {held_out[name]:+.1%}")
    for link, fitted, latency, errors in latency_fits():
        print(f"{link}: latency {latency * 1e6:.2f} us per hop (fitted to {fitted})")
        for name, error in errors.items():
            print(f"    held out {name:34s} predicted / measured - 1 = {error:+.1%}")


if __name__ == "__main__":
    main()
