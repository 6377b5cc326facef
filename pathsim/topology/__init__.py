"""Topologies built from a ClusterConfig: graph, link index and routing.

``build_topology`` is cached by the topology-relevant part of the config, so
routes and link indices are computed once per distinct network.
"""

from __future__ import annotations

import numpy as np

from pathsim.cluster import ClusterConfig, FatTreeSpec, GraphSpec, MultiSliceSpec, TorusSpec
from pathsim.errors import PathsimConfigError
from pathsim.network.nccl import NcclTuning
from pathsim.topology.base import Topology
from pathsim.topology.custom import CustomGraph
from pathsim.topology.fat_tree import FatTree
from pathsim.topology.multi_slice import MultiSlice
from pathsim.topology.torus import Torus

_CACHE: dict[str, Topology] = {}
_CACHE_LIMIT = 16


def build_topology(cluster: ClusterConfig, source: str | None = None) -> Topology:
    """The routed network of a cluster; user mistakes raise PathsimConfigError."""
    # Hosts shape a multi-slice network (chips sharing a NIC), so they are part of what it depends on.
    key = cluster.topology.model_dump_json() + "|" + cluster.model_dump_json(include={"links", "host", "collective_library"})
    if key in _CACHE:
        return _CACHE[key]
    try:
        topology = _build(cluster)
    except PathsimConfigError as exc:
        raise exc.within(source or exc.source) from None
    # Link classes named after the cluster's link specs (nvlink, nic; a torus's ici+x, ici-y, ...) take their
    # all-to-all share.
    classes, class_of_link = np.unique(topology.link_class, return_inverse=True)  # a few names for every link
    for attribute, default in (("all_to_all_share", 1.0), ("in_switch_share", 0.0), ("in_switch_latency", 0.0)):
        shares = {name: getattr(spec, attribute) for name, spec in cluster.links.items()}
        per_class = np.array([shares.get(str(c), shares.get(str(c).split("+")[0].split("-")[0], default)) for c in classes],
                             dtype=np.float64)
        setattr(topology, attribute, per_class[class_of_link.ravel()])
    library = cluster.collective_library
    topology.collective_library = None if library is None else NcclTuning(library.arch, library.host_cpu, tuple(library.protocols))
    if not topology.is_connected():
        raise PathsimConfigError(source or cluster.name, "topology", "the network is disconnected: some chips cannot reach others",
                                 "add the missing links (every chip must reach every other)")
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = topology
    return topology


def _build(cluster: ClusterConfig) -> Topology:
    spec, links = cluster.topology, cluster.links
    if isinstance(spec, MultiSliceSpec):
        dcn = spec.dcn
        host_link = None if dcn.host_link is None else (links[dcn.host_link].achieved_bandwidth, links[dcn.host_link].latency, dcn.host_link)
        try:
            inner = _build_spec(f"{cluster.name} slice", spec.slice, links)
        except PathsimConfigError as exc:  # the slice's own checks name its fields as a topology's
            raise PathsimConfigError(cluster.name, exc.field.replace("topology.", "topology.slice.", 1), exc.problem,
                                     exc.fix) from None
        return MultiSlice(cluster.name, inner, spec.slices, cluster.host.chips_per_host, host_link,
                          (links[dcn.nic].achieved_bandwidth, links[dcn.nic].latency, dcn.nic), dcn.nics_per_host, dcn.oversubscription)
    return _build_spec(cluster.name, spec, links)


def _build_spec(name: str, spec: "TorusSpec | FatTreeSpec | GraphSpec", links) -> Topology:
    if isinstance(spec, TorusSpec):
        link = links[spec.link]
        return Torus(name, spec.dims, spec.wrap_per_dim(), link.achieved_bandwidth, link.latency,
                     twisted=spec.twisted, link_class=spec.link)
    if isinstance(spec, FatTreeSpec):
        pair = lambda name: (links[name].achieved_bandwidth, links[name].latency)  # noqa: E731
        return FatTree(name, nodes=spec.nodes, gpus_per_node=spec.gpus_per_node,
                       rail_optimized=spec.kind == "rail_optimized", switch_radix=spec.switch_radix,
                       oversubscription=spec.oversubscription, nics_per_gpu=spec.nics_per_gpu,
                       nvlink=pair(spec.nvlink) if spec.gpus_per_node > 1 else None,
                       nic=pair(spec.nic), fabric=pair(spec.fabric or spec.nic),
                       pod_nodes=spec.pod.nodes if spec.pod else None,
                       pod_oversubscription=spec.pod.oversubscription if spec.pod else 1.0,
                       spine_radix=spec.pod.switch_radix if spec.pod else None,
                       core=pair(spec.pod.core) if spec.pod and spec.pod.core else None, pxn=spec.pxn)
    return _build_graph(name, spec, links)


def _build_graph(name: str, spec: GraphSpec, links) -> CustomGraph:
    switch_ids = {s: spec.chips + i for i, s in enumerate(spec.switches)}
    if len(switch_ids) != len(spec.switches):
        raise PathsimConfigError(name, "topology.switches", "switch names must be unique", "rename the duplicates")

    def node(value, field):
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < spec.chips:
                return value
            raise PathsimConfigError(name, field, f"chip {value} is outside 0..{spec.chips - 1}", "use a chip id below `chips`")
        if value in switch_ids:
            return switch_ids[value]
        raise PathsimConfigError(name, field, f"{value!r} is neither a chip id nor a listed switch", "list it under `switches:`")

    src, dst, bw, lat, cls = [], [], [], [], []
    for i, edge in enumerate(spec.edges):
        a, b = node(edge.a, f"topology.edges[{i}].a"), node(edge.b, f"topology.edges[{i}].b")
        if a == b:
            raise PathsimConfigError(name, f"topology.edges[{i}]", "an edge joins a node to itself", "remove the self-loop")
        pairs = [(a, b), (b, a)] if edge.bidirectional else [(a, b)]
        for u, v in pairs:
            src.append(u)
            dst.append(v)
            bw.append(links[edge.link].achieved_bandwidth)
            lat.append(links[edge.link].latency)
            cls.append(edge.link)
    node_names = [str(c) for c in range(spec.chips)] + list(spec.switches)
    return CustomGraph(name, spec.chips, node_names, np.array(src), np.array(dst), np.array(bw), np.array(lat), np.array(cls))


__all__ = ["CustomGraph", "FatTree", "MultiSlice", "Topology", "Torus", "build_topology"]
