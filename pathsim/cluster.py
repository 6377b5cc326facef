"""Cluster configuration: chips, links, hosts and the topology that joins them.

These pydantic models are the validated, unit-explicit form of a cluster YAML
(see ``topologies/`` for presets). Unknown fields are rejected; sizes and rates
accept units (``"32GiB"``, ``"50GB/s"``, ``"1us"``). Every hardware constant in a
preset carries a ``source:`` saying where it comes from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from annotated_types import Ge, Gt
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from pathsim.errors import PathsimConfigError
from pathsim.units import Bytes, BytesPerSecond, FlopPerSecond, Seconds, Watts
from pathsim.yaml_config import load_config


# Dense N×N traffic matrices and uint16 hop tables stay workable up to here.
MAX_CHIPS = 131072


# Far beyond any built fabric (Llama 3's cluster: 1:7 between pods), and small enough that switch counts derived
# from it stay integers.
MAX_OVERSUBSCRIPTION = 1024.0
# The largest integer a config may give: the models compute in float64, which holds every integer up to 2^53
# exactly; a larger one (1e30 experts, an id beyond int64) would overflow numpy or lose its meaning silently.
MAX_EXACT_INT = 2**53


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _integers_in_range(cls, value):
        """Every integer of every config (in lists and mappings too) within ±2^53."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_EXACT_INT:
                shown = f"{float(item):.4g}" if item.bit_length() < 1000 else f"a {item.bit_length()}-bit integer"
                raise ValueError(f"{shown} is beyond the integers pathsim computes with exactly "
                                 f"(at most 2^53 = {MAX_EXACT_INT:,})")
        return value


def _check_chip_count(count: int) -> None:
    if count > MAX_CHIPS:
        raise ValueError(f"{count} chips exceed pathsim's limit of {MAX_CHIPS} per network")


class ChipSpec(StrictModel):
    """One accelerator chip. Peak rates are dense (no sparsity)."""

    name: str
    peak_flops: dict[str, FlopPerSecond] = Field(description="peak dense FLOP/s per dtype, e.g. {bf16: 275TFLOP/s}")
    hbm_bytes: Annotated[Bytes, Gt(0)]
    hbm_bandwidth: Annotated[BytesPerSecond, Gt(0)]
    idle_power: Annotated[Watts, Ge(0)]
    peak_power: Annotated[Watts, Gt(0)]
    kernel_efficiency: float = Field(
        1.0, gt=0.0, le=1.5, allow_inf_nan=False,
        description="the share of the documented default kernel efficiencies (pathsim/device.py) this chip family's "
                    "kernels reach: every flops_efficiency of the defaults is scaled by it (capped at 1). 1 unless "
                    "fitted to the validation suite by validation/fit_device.py; a measured profile replaces it")
    kernel_efficiency_source: str = ""  # the fit behind kernel_efficiency (which entries)
    emulated_dtypes: dict[str, str] = Field(
        default_factory=dict,
        description="dtypes the chip has no rate of its own for, each mapped to the dtype its matrix units multiply "
                    "them in, one pass or several (model.matmul_precision): TPUs multiply fp32 as bfloat16 passes "
                    "(Cloud TPU docs, 'bfloat16'; JAX's matmul precision: one pass by default, 3 or 6 at high and "
                    "highest). Tensors keep the emulated dtype's bytes")
    communication_activity: float = Field(
        0.25, ge=0.0, le=1.0, allow_inf_nan=False,
        description="share of (peak_power - idle_power) drawn while the chip only communicates: its matrix units idle "
                    "while HBM, DMA engines and link SerDes run. Default 0.25 is an assumption: no per-state "
                    "measurement is published; calibrate it from a power trace")
    source: str

    @field_validator("peak_flops")
    @classmethod
    def _positive_rates(cls, rates: dict[str, float]) -> dict[str, float]:
        if not rates:
            raise ValueError("needs at least one dtype, e.g. `bf16: 275TFLOP/s`")
        for dtype, rate in rates.items():
            if rate <= 0:
                raise ValueError(f"peak FLOP/s for {dtype} must be positive, got {rate}")
        return rates

    @model_validator(mode="after")
    def _idle_below_peak(self) -> "ChipSpec":
        if self.idle_power > self.peak_power:
            raise ValueError(f"idle_power ({self.idle_power} W) exceeds peak_power ({self.peak_power} W)")
        for dtype, base in self.emulated_dtypes.items():
            if dtype in self.peak_flops or base not in self.peak_flops:
                raise ValueError(f"emulated_dtypes maps {dtype} to {base}: {base} needs a peak_flops rate and {dtype} "
                                 f"none of its own (the chip's rates: {sorted(self.peak_flops)})")
        return self

    def matrix_dtype(self, dtype: str) -> str | None:
        """The dtype whose peak rate `dtype`'s matmuls run at: its own, the one it is emulated in, or None."""
        if dtype in self.peak_flops:
            return dtype
        return self.emulated_dtypes.get(dtype)


class LinkSpec(StrictModel):
    """A class of link. Bandwidth is per direction: a full-duplex link is two of these."""

    bandwidth: Annotated[BytesPerSecond, Ge(1)]  # below 1 byte/s is a unit mistake, not a link
    latency: Annotated[Seconds, Ge(0)]
    source: str
    efficiency: float = Field(1.0, gt=0.0, le=1.0,
                              description="share of the bandwidth large transfers reach on this class of link (the "
                                          "communication library's protocol overhead: NCCL's on NVLink, an HCA's on "
                                          "InfiniBand); every model routes at bandwidth x efficiency")
    all_to_all_efficiency: float | None = Field(
        None, gt=0.0, le=1.0, description="the same share for all-to-alls, whose many concurrent peer-to-peer "
                                          "transfers reach less than a collective's ring steps (default: efficiency)")
    in_switch_efficiency: float | None = Field(
        None, gt=0.0, le=1.0, description="the share an all-reduce reduced inside the switch reaches (NVLink SHARP, "
                                          "NCCL's NVLS on NVSwitch 3 nodes: each GPU sends its buffer up once and reads "
                                          "the sum back once); None: the switch cannot reduce")
    in_switch_latency: Annotated[Seconds, Ge(0)] = Field(
        0.0, description="the latency of an all-reduce reduced in the switch, in place of its route's when longer: "
                         "NVLS's fixed cost of loading and reducing in the NVSwitch (NCCL's cost model charges 25 us "
                         "on NVLink: src/graph/tuning.cc, the NVLS hardware latency); only with in_switch_efficiency")
    efficiency_source: str = ""  # where the efficiencies come from (a fit to measurements: say which)

    @model_validator(mode="after")
    def _in_switch_latency_needs_a_reducing_switch(self) -> "LinkSpec":
        if self.in_switch_latency > 0 and self.in_switch_efficiency is None:
            raise ValueError("in_switch_latency is the latency of an in-switch reduction: set in_switch_efficiency too, "
                             "or drop it")
        return self

    @property
    def achieved_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency

    @property
    def all_to_all_share(self) -> float:
        """What an all-to-all reaches of the achieved bandwidth."""
        return 1.0 if self.all_to_all_efficiency is None else self.all_to_all_efficiency / self.efficiency

    @property
    def in_switch_share(self) -> float:
        """What an in-switch all-reduce reaches of the achieved bandwidth (0: the switch cannot reduce)."""
        return 0.0 if self.in_switch_efficiency is None else self.in_switch_efficiency / self.efficiency


class HostSpec(StrictModel):
    chips_per_host: int = Field(gt=0)
    power: Annotated[Watts, Ge(0)] = Field(description="host power excluding the accelerators (CPUs, memory, NICs, fans)")
    source: str


class NetworkPowerSpec(StrictModel):
    """Power of the network outside the chips and hosts, for energy reports."""

    per_switch: Annotated[Watts, Ge(0)] = Field(0.0, description="each network switch the topology builds (fat-tree "
                                                                  "leaves and spines, graph switches; NVSwitches are host power)")
    per_chip: Annotated[Watts, Ge(0)] = Field(0.0, description="optics and optical circuit switches, counted per chip")
    source: str


class TorusSpec(StrictModel):
    """A 1D/2D/3D torus (or mesh, per dimension) of chips joined by one link class.

    ``twisted: true`` asks for the TPU v4 twisted torus, defined for shapes
    n×n×2n and n×2n×2n (see pathsim.topology.torus for the wiring and source).
    """

    kind: Literal["torus"]
    dims: list[StrictInt] = Field(min_length=1, max_length=3)
    wraparound: bool | list[bool] = True
    twisted: bool = False
    link: str = "ici"

    @field_validator("dims")
    @classmethod
    def _dims_positive(cls, dims: list[int]) -> list[int]:
        if any(k < 1 for k in dims):
            raise ValueError(f"every dimension needs at least 1 chip, got {dims}")
        if all(k == 1 for k in dims):
            raise ValueError(f"a torus needs at least 2 chips, got {dims}")
        return dims

    @model_validator(mode="after")
    def _consistent(self) -> "TorusSpec":
        wrap = self.wrap_per_dim()
        if len(wrap) != len(self.dims):
            raise ValueError(f"wraparound lists {len(wrap)} dimensions but dims has {len(self.dims)}")
        for k, w in zip(self.dims, wrap):
            if w and k == 2:
                raise ValueError(f"wraparound on a dimension of 2 chips would duplicate its one link (dims {self.dims}); set wraparound false there")
        _check_chip_count(math.prod(self.dims))
        if self.twisted:
            n = min(self.dims)
            if len(self.dims) != 3 or self.dims not in ([n, n, 2 * n], [n, 2 * n, 2 * n]) or not all(wrap):
                raise ValueError(f"twisted tori are defined for 3D shapes n×n×2n and n×2n×2n (short dimensions first) "
                                 f"with wraparound, got {self.dims}")
        return self

    def wrap_per_dim(self) -> list[bool]:
        return [self.wraparound] * len(self.dims) if isinstance(self.wraparound, bool) else list(self.wraparound)

    @property
    def num_chips(self) -> int:
        return math.prod(self.dims)


class PodSpec(StrictModel):
    """The third tier of a fat tree: pods of consecutive nodes, each with its own spines, joined by core switches."""

    nodes: int = Field(gt=0, description="nodes per pod (the last pod may hold fewer)")
    oversubscription: float = Field(1.0, ge=1.0, le=MAX_OVERSUBSCRIPTION, allow_inf_nan=False,
                                    description="a spine's bandwidth down to its leaves : up to the core")
    switch_radix: int | None = Field(None, gt=1, le=4096, description="ports per spine and core switch "
                                                                      "(default: the leaves' switch_radix)")
    core: str | None = Field(None, description="link class between spines and core switches (default: the fabric class)")


class FatTreeSpec(StrictModel):
    """GPU nodes (an NVLink/NVSwitch domain each) on a leaf/spine fabric, or with ``pod`` a leaf/spine/core one.

    ``fat_tree`` puts whole nodes under a leaf; ``rail_optimized`` wires GPU r of
    every node to rail r's leaf (as in NVIDIA DGX SuperPOD), a leaf per rail per
    group of nodes.
    """

    kind: Literal["fat_tree", "rail_optimized"]
    nodes: int = Field(gt=0)
    gpus_per_node: int = Field(gt=0)
    nvlink: str = Field("nvlink", description="link class between each GPU and its node's NVSwitch")
    nic: str = Field("nic", description="link class between each GPU's NIC and its leaf switch")
    nics_per_gpu: int = Field(1, gt=0)
    fabric: str | None = Field(None, description="link class between leaves and spines (default: the nic class)")
    switch_radix: int = Field(gt=1, le=4096, description="ports per leaf and spine switch")
    oversubscription: float = Field(1.0, ge=1.0, le=MAX_OVERSUBSCRIPTION, allow_inf_nan=False,
                                    description="leaf down-ports : up-ports")
    pod: PodSpec | None = Field(None, description="pods and a core tier above the spines (three-tier fabrics)")
    pxn: bool = Field(True, description="rail_optimized: traffic to another node's GPU on another rail crosses NVLink to "
                                        "the GPU on that rail first and stays on its rail (NCCL's PXN, on by default "
                                        "since NCCL 2.12); false sends it up through the spines")

    @model_validator(mode="after")
    def _sized(self) -> "FatTreeSpec":
        _check_chip_count(self.nodes * self.gpus_per_node)
        down = int(self.switch_radix * self.oversubscription / (1 + self.oversubscription))
        if down < 1 or self.switch_radix - down < 1:
            raise ValueError(f"oversubscription {self.oversubscription} leaves a radix-{self.switch_radix} leaf without "
                             f"{'down' if down < 1 else 'up'} ports; use a ratio between 1 and {self.switch_radix - 1}")
        return self

    @property
    def num_chips(self) -> int:
        return self.nodes * self.gpus_per_node


class GraphEdge(StrictModel):
    a: StrictInt | str
    b: StrictInt | str
    link: str
    bidirectional: bool = True


class GraphSpec(StrictModel):
    """Any other network: chips 0..chips-1, named switches, and an edge list."""

    kind: Literal["graph"]
    chips: int = Field(ge=1, le=MAX_CHIPS)
    switches: list[str] = Field(default_factory=list)
    edges: list[GraphEdge] = Field(min_length=1)

    @property
    def num_chips(self) -> int:
        return self.chips


SliceSpec = Annotated[Union[TorusSpec, FatTreeSpec], Field(discriminator="kind")]


class DcnSpec(StrictModel):
    """How the slices' hosts reach each other over the data-center network (DCN).

    Every host (``host.chips_per_host`` chips) has NICs into its slice's DCN
    aggregation; each slice's aggregation has one uplink bundle into the DCN
    core whose bandwidth is the slice's NIC total over ``oversubscription``.
    A chip reaches its own host over ``host_link`` (PCIe); left out, that hop
    is as fast as the host's NICs, so the NIC, shared by the host's chips, is
    the first place cross-slice traffic queues.
    """

    nic: str = Field("dcn", description="link class of one host NIC into the DCN (per direction)")
    nics_per_host: int = Field(1, gt=0)
    host_link: str | None = Field(None, description="link class between a chip and its host (default: as fast as the host's NICs)")
    oversubscription: float = Field(1.0, ge=1.0, le=MAX_OVERSUBSCRIPTION, allow_inf_nan=False,
                                    description="a slice's total NIC bandwidth : its uplink into the DCN core")


class MultiSliceSpec(StrictModel):
    """Several identical slices (TPU tori or GPU fat trees) joined by the data-center network.

    Chips are numbered slice after slice: slice s holds chips s·n .. (s+1)·n − 1,
    each numbered inside its slice as the slice's own topology numbers them.
    """

    kind: Literal["multi_slice"]
    slices: int = Field(ge=1, le=1024)
    slice: SliceSpec
    dcn: DcnSpec = Field(default_factory=DcnSpec)

    @model_validator(mode="after")
    def _sized(self) -> "MultiSliceSpec":
        _check_chip_count(self.num_chips)
        return self

    @property
    def chips_per_slice(self) -> int:
        return self.slice.num_chips

    @property
    def num_chips(self) -> int:
        return self.slices * self.slice.num_chips


TopologySpec = Annotated[Union[TorusSpec, FatTreeSpec, GraphSpec, MultiSliceSpec], Field(discriminator="kind")]


class CollectiveLibrarySpec(StrictModel):
    """The communication library a GPU cluster's collectives run on, for its protocols' costs
    (pathsim/network/nccl.py); absent, collectives pay the links' per-hop latencies and no protocol."""

    name: Literal["nccl"] = Field(description="the library whose cost model prices each collective's protocol")
    arch: Literal["volta", "ampere", "hopper"] = Field(
        description="the GPUs' generation, the row of NCCL's per-architecture tables (sm70, sm80, sm90)")
    host_cpu: Literal["intel", "amd"] = Field(
        description="the hosts' CPU vendor: NCCL's tuner caps the LL protocol across nodes by it")
    protocols: list[Literal["LL", "LL128", "Simple"]] = Field(
        default_factory=lambda: ["LL", "LL128", "Simple"], min_length=1,
        description="the protocols the tuner may pick (as NCCL_PROTO restricts them)")
    source: str = ""

    @field_validator("protocols")
    @classmethod
    def _distinct(cls, protocols: list[str]) -> list[str]:
        if len(set(protocols)) != len(protocols):
            raise ValueError(f"protocols lists one twice: {protocols}")
        return protocols


class ClusterConfig(StrictModel):
    FIX_HINT: ClassVar[str] = "see the cluster presets for working examples (`pathsim presets --kind topologies`)"
    name: str
    description: str = ""
    chip: ChipSpec
    host: HostSpec
    links: dict[str, LinkSpec]
    topology: TopologySpec
    source: str = ""
    network_power: NetworkPowerSpec | None = Field(None, description="switch and optics power; absent means 0 W, "
                                                                       "and reports say so")
    profile: str | None = Field(None, description="device profile for this cluster's chips: a shipped profile's name "
                                                  "(`pathsim presets --kind profiles`) or a JSON file, relative to this file")
    collective_library: CollectiveLibrarySpec | None = Field(
        None, description="the GPU communication library whose protocols price collectives (fat-tree clusters only)")

    @model_validator(mode="after")
    def _links_exist(self) -> "ClusterConfig":
        topo = self.topology
        used: dict[str, str | None] = {}
        if isinstance(topo, MultiSliceSpec):
            used.update({f"slice.{field}": name for field, name in _links_used(topo.slice).items()})
            used.update({"dcn.nic": topo.dcn.nic, "dcn.host_link": topo.dcn.host_link})
            if topo.chips_per_slice % self.host.chips_per_host:
                raise ValueError(f"a slice of {topo.chips_per_slice} chips does not split into hosts of "
                                 f"{self.host.chips_per_host} chips (host.chips_per_host)")
        else:
            used = _links_used(topo)
        for field, name in used.items():
            if name is not None and name not in self.links:
                raise ValueError(f"topology.{field} names link class {name!r}, but `links:` defines only {sorted(self.links)}")
        gpu_nodes = isinstance(topo, FatTreeSpec) or (isinstance(topo, MultiSliceSpec) and isinstance(topo.slice, FatTreeSpec))
        if self.collective_library is not None and not gpu_nodes:
            raise ValueError("collective_library prices NCCL's protocols on GPU nodes: it needs a fat_tree or "
                             "rail_optimized topology (or slices of one); drop it here")
        return self

    @property
    def num_chips(self) -> int:
        return self.topology.num_chips


def _links_used(topo: "TorusSpec | FatTreeSpec | GraphSpec") -> dict[str, str | None]:
    """Link classes a topology names, by the field naming each."""
    if isinstance(topo, TorusSpec):
        return {"link": topo.link}
    if isinstance(topo, FatTreeSpec):
        return {"nvlink": topo.nvlink if topo.gpus_per_node > 1 else None, "nic": topo.nic, "fabric": topo.fabric,
                "pod.core": topo.pod.core if topo.pod else None}
    return {f"edges[{i}].link": edge.link for i, edge in enumerate(topo.edges)}


def load_cluster(spec: "str | Path | dict | ClusterConfig") -> ClusterConfig:
    """A ClusterConfig from a preset name, a YAML path, a dict or a ClusterConfig."""
    def profile_beside_file(data: dict, path: Path) -> None:
        profile = data.get("profile")
        if isinstance(profile, str) and profile.endswith(".json") and not Path(profile).is_absolute():
            data["profile"] = str(path.resolve().parent / profile)

    return load_config(ClusterConfig, spec, "topologies", profile_beside_file)


__all__ = [
    "ChipSpec",
    "ClusterConfig",
    "DcnSpec",
    "FatTreeSpec",
    "PodSpec",
    "GraphEdge",
    "GraphSpec",
    "HostSpec",
    "LinkSpec",
    "MultiSliceSpec",
    "NetworkPowerSpec",
    "PathsimConfigError",
    "TorusSpec",
    "load_cluster",
]
