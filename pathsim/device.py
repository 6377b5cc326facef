"""Device model: how long one kernel takes on one chip.

Every op is costed by a roofline — its FLOPs against the chip's peak rate and
its HBM bytes against the memory bandwidth — scaled by per-kernel-family
efficiencies, plus a fixed launch overhead:

    time = overhead_s + max(flops / (peak × flops_eff(flops)), bytes / (hbm_bw × memory_eff))
    flops_eff(F) = flops_efficiency × F / (F + half_efficiency_flops)

The second line is the usual saturating curve: small kernels do not fill the
machine. A fitted ``overlap_exponent`` p replaces the max by the soft
roofline (C^p + M^p)^(1/p) for devices that do not overlap arithmetic with
memory traffic perfectly. A :class:`DeviceProfile` holds these numbers per kernel family and
round-trips through JSON. ``pathsim calibrate`` writes measured profiles: the
parameters fitted per dtype, the network's fitted link bandwidth and latency,
and every timed sample they were fitted to, with the device, versions and date.
The FLOPs and bytes of each kernel come from :mod:`pathsim.kernel_costs`, for
the simulator and the calibration alike.

Default efficiencies are deliberately round figures from published
utilisation: large bf16 matmuls reach 60–75 % of peak on TPU v4 and H100
(PaLM reports 57.8 % model FLOPs utilisation end-to-end on TPU v4; NVIDIA's
cuBLAS GEMM benchmarks reach ~70 % of dense H100 peak); grouped expert GEMMs are
less efficient (MegaBlocks, Gale et al. 2023, reports block-sparse kernels at
~60–90 % of cuBLAS); fused attention reaches 50–73 % of A100 peak forward and
backward (FlashAttention-2, Dao 2023) and up to 75 % of H100's in fp16
(FlashAttention-3, Shah et al. 2024), the default's 0.55 at the low end; streaming
kernels reach ~80 % of HBM bandwidth (STREAM-like copies on H100 and TPU). A
cluster's ``chip.kernel_efficiency`` scales every flops efficiency for its chip
family: fitted to the validation suite by ``validation/fit_device.py`` where a
family has three timed entries (A100 1.02 over 29, H100 0.80 over 3 — the H800
inherits it —, V100 0.54 over 8, TPU v3 1.11 over 3), 1 elsewhere. Replace them
with a calibrated profile for decisions.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from pathsim.cluster import ChipSpec, StrictModel
from pathsim.errors import PathsimConfigError
from pathsim.input_files import read_json
from pathsim.presets import preset_names, preset_path
from pathsim.yaml_config import validate_model

KernelFamily = Literal["matmul", "ffn", "attention", "expert_ffn", "router", "permute", "unpermute", "dispatch_einsum",
                       "elementwise", "copy", "optimizer"]
KERNEL_FAMILIES: tuple[str, ...] = KernelFamily.__args__


class KernelModel(StrictModel):
    flops_efficiency: float = Field(gt=0, le=1, allow_inf_nan=False, description="fraction of peak FLOP/s reached by large kernels")
    half_efficiency_flops: float = Field(0.0, ge=0, allow_inf_nan=False, description="kernel FLOPs at which half of flops_efficiency is reached")
    memory_efficiency: float = Field(gt=0, le=1, allow_inf_nan=False, description="fraction of HBM bandwidth reached")
    overhead_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="fixed cost per kernel launch")
    overlap_exponent: float | None = Field(
        None, ge=1, allow_inf_nan=False,
        description="how compute and memory time combine: (C^p + M^p)^(1/p); None is the roofline's max(C, M) "
                    "(perfect overlap), 1 their sum (none). Calibration fits it: CPUs overlap far less than accelerators")


def _missing_families(kernels: dict) -> list[str]:
    return [k for k in KERNEL_FAMILIES if k not in kernels]


class DtypeFit(StrictModel):
    """Kernel models fitted to one dtype's measurements."""

    peak_flops: float = Field(gt=0, allow_inf_nan=False,
                              description="the best FLOP/s measured in this dtype; flops efficiencies are relative to it")
    hbm_bandwidth: float = Field(gt=0, allow_inf_nan=False,
                                 description="the best bytes/s measured in this dtype; memory efficiencies are relative to it")
    kernels: dict[KernelFamily, KernelModel]

    @model_validator(mode="after")
    def _every_family(self) -> "DtypeFit":
        if missing := _missing_families(self.kernels):
            raise ValueError(f"kernels lacks {missing}; every kernel family needs a fit")
        return self


class KernelSample(StrictModel):
    """One timed kernel shape: what ran, its cost by pathsim's formulas, and every repeat's time."""

    kernel: str = Field(description="family/variant, e.g. 'expert_ffn/swiglu'")
    family: KernelFamily
    dtype: str
    shape: dict[str, int]
    flops: float = Field(ge=0, allow_inf_nan=False)
    nbytes: float = Field(ge=0, allow_inf_nan=False)
    times_s: list[float] = Field(min_length=1, description="every timed repeat (compile and warm-up excluded)")
    held_out: bool = Field(False, description="measured for validation, not used by the fit")

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))


class CollectiveSample(StrictModel):
    op: Literal["all_to_all", "all_reduce", "all_gather"]
    devices: int = Field(ge=2)
    nbytes: float = Field(gt=0, description="bytes per device (the collective's size argument in pathsim.collectives)")
    times_s: list[float] = Field(min_length=1)

    @property
    def median_s(self) -> float:
        return float(np.median(self.times_s))


class NetworkFit(StrictModel):
    """Link bandwidth and latency of a one-switch cluster of the measured devices, fitted to its collectives."""

    link_bandwidth: float = Field(gt=0, allow_inf_nan=False, description="bytes/s per direction of each device's link")
    latency_s: float = Field(ge=0, allow_inf_nan=False, description="per hop")
    samples: list[CollectiveSample] = Field(default_factory=list)


class DeviceProfile(StrictModel):
    """Per-kernel-family efficiencies for one device kind, with provenance.

    Either dtype-independent ``kernels`` (the documented defaults) or measured
    ``dtypes``; a measured profile refuses a dtype it did not measure rather
    than guess.
    """
    FIX_HINT: ClassVar[str] = "write profiles with `pathsim calibrate`; `pathsim presets --kind profiles` lists the shipped ones"

    name: str
    device_kind: str = Field(description="what was measured (e.g. 'NVIDIA H100 80GB HBM3'), or 'defaults'")
    source: str = Field(description="how the numbers were obtained: a citation, or the calibration command")
    created: str = Field(default_factory=lambda: datetime.date.today().isoformat())
    versions: dict[str, str] = Field(default_factory=dict, description="jax/jaxlib/driver versions for measured profiles")
    host: str = Field("", description="the machine measured: platform, processor, cores")
    devices: int = Field(1, ge=1, description="devices running each kernel at once (they may share a host's cores)")
    sweep: Literal["quick", "full"] | None = Field(None, description="the calibration sweep measured")
    seed: int = Field(0, description="the calibration sweep's seed (it picks the shapes)")
    peak_flops: float | None = Field(None, gt=0, description="override the chip's peak FLOP/s")
    hbm_bandwidth: float | None = Field(None, gt=0, description="override the chip's HBM bandwidth (measured profiles)")
    kernels: dict[KernelFamily, KernelModel] | None = None
    dtypes: dict[str, DtypeFit] = Field(default_factory=dict, description="fits per measured dtype")
    network: NetworkFit | None = None
    samples: list[KernelSample] = Field(default_factory=list, description="every timed kernel shape, fitted and held out")
    other_chips: bool = Field(False, description="applied to a chip of another kind on purpose (--force-profile): "
                                                 "without it, a profile measured on one kind refuses another")

    @model_validator(mode="after")
    def _every_family(self) -> "DeviceProfile":
        if self.kernels is None and not self.dtypes:
            raise ValueError("a profile needs `kernels` (for every dtype) or `dtypes` (fits per measured dtype)")
        if self.kernels is not None and (missing := _missing_families(self.kernels)):
            raise ValueError(f"kernels lacks {missing}; every kernel family needs an entry")
        return self

    def for_dtype(self, dtype: str, source: str = "<profile>") -> tuple[dict[str, KernelModel], float | None, float | None]:
        """Kernel models, and peak FLOP/s and HBM bandwidth overrides, for a workload's dtype."""
        if dtype in self.dtypes:
            fit = self.dtypes[dtype]
            return fit.kernels, fit.peak_flops, fit.hbm_bandwidth
        if self.kernels is None:
            raise PathsimConfigError(source, "model.dtype", f"device profile {self.name!r} measured only {sorted(self.dtypes)}, not {dtype!r}",
                                     f"calibrate {dtype} (`pathsim calibrate --dtypes {dtype}`) or set model.dtype to one of those")
        return self.kernels, self.peak_flops, self.hbm_bandwidth


def default_profile(chip: ChipSpec | None = None) -> DeviceProfile:
    """Documented round-figure efficiencies (see the module docstring); for `chip`, with every flops efficiency
    scaled by its family's fitted ``kernel_efficiency``."""
    if chip is None or chip.kernel_efficiency == 1.0:
        return _documented_defaults()
    return scaled_defaults(chip.kernel_efficiency, chip.name,
                           chip.kernel_efficiency_source or "the cluster file sets chip.kernel_efficiency")


def scaled_defaults(scale: float, what: str, why: str) -> DeviceProfile:
    """The documented defaults with every flops efficiency scaled by `scale` (capped at 1), for `what` (a chip),
    because of `why` (the fit behind the scale)."""
    defaults = _documented_defaults()
    kernels = {name: k.model_copy(update={"flops_efficiency": min(1.0, k.flops_efficiency * scale)})
               for name, k in defaults.kernels.items()}
    return defaults.model_copy(update={"kernels": kernels, "name": f"defaults for {what}",
                                       "source": f"{defaults.source}; flops efficiencies x {scale:g} for {what} ({why})"})


def _documented_defaults() -> DeviceProfile:
    return DeviceProfile(
        name="defaults",
        device_kind="defaults",
        source="pathsim documented defaults (pathsim/device.py); replace with `pathsim calibrate` output",
        created="2026-11-23",
        kernels={
            "matmul": KernelModel(flops_efficiency=0.70, half_efficiency_flops=2e9, memory_efficiency=0.80, overhead_s=5e-6),
            # Accelerators fuse the activation into the matmul's epilogue: a dense FFN runs like a matmul.
            "ffn": KernelModel(flops_efficiency=0.70, half_efficiency_flops=2e9, memory_efficiency=0.80, overhead_s=5e-6),
            "attention": KernelModel(flops_efficiency=0.55, half_efficiency_flops=2e9, memory_efficiency=0.80, overhead_s=5e-6),
            "expert_ffn": KernelModel(flops_efficiency=0.60, half_efficiency_flops=4e9, memory_efficiency=0.80, overhead_s=10e-6),
            "router": KernelModel(flops_efficiency=0.40, half_efficiency_flops=1e8, memory_efficiency=0.80, overhead_s=5e-6),
            "permute": KernelModel(flops_efficiency=0.10, memory_efficiency=0.60, overhead_s=5e-6),
            "unpermute": KernelModel(flops_efficiency=0.10, memory_efficiency=0.60, overhead_s=5e-6),
            # A one-hot matmul: dense-matmul-like, but its capacity dimension is short and its mask is mostly zeros.
            "dispatch_einsum": KernelModel(flops_efficiency=0.50, half_efficiency_flops=1e9, memory_efficiency=0.80, overhead_s=5e-6),
            "elementwise": KernelModel(flops_efficiency=0.10, memory_efficiency=0.80, overhead_s=2e-6),
            "copy": KernelModel(flops_efficiency=0.10, memory_efficiency=0.85, overhead_s=2e-6),
            "optimizer": KernelModel(flops_efficiency=0.10, memory_efficiency=0.80, overhead_s=20e-6),
        },
    )


def chip_family(name: str) -> str | None:
    """The chip kind a name means, as JAX's device_kind and the presets' chip names write it: 'NVIDIA H100 80GB HBM3'
    and 'NVIDIA H100 SXM5 80GB' are both 'h100', 'TPU v5 lite' (JAX) and 'TPU v5e' both 'tpu v5e', a CPU 'cpu';
    None where the name says no kind pathsim knows (a user's own chip)."""
    text = name.lower()
    tpu = re.search(r"tpu v(\d+)\s*(lite|[a-z])?\b", text)
    if tpu:
        suffix = {"lite": "e", None: "p" if tpu.group(1) == "5" else ""}.get(tpu.group(2), tpu.group(2))
        return f"tpu v{tpu.group(1)}{suffix}"
    gpu = re.search(r"\b([abhlv]\d{2,3}[a-z]?|gb?\d{3})\b", text)
    if gpu:
        return gpu.group(1)
    return "cpu" if re.search(r"\bcpu\b", text) else None


def check_profile_fits(profile: DeviceProfile, chip: ChipSpec, source: str) -> None:
    """Refuse a measured profile on a chip of another kind (a CPU's fits on an H100 predicted 35.8 days a step)."""
    measured, target = chip_family(profile.device_kind), chip_family(chip.name)
    if profile.device_kind == "defaults" or profile.other_chips or measured is None or target is None or measured == target:
        return
    raise PathsimConfigError(source, "profile", f"{profile.name} was measured on {profile.device_kind!r} ({measured}), but the "
                             f"cluster's chips are {chip.name!r} ({target}): its fitted rates would stand in for another chip's",
                             f"calibrate on a {target} (`pathsim calibrate`), or pass --force-profile to apply it anyway")


def load_profile(spec: "str | Path | DeviceProfile | None", chip: ChipSpec | None = None) -> DeviceProfile:
    """A profile from a JSON file or a shipped profile's name (calibration/profiles/NAME.json); for None, the
    defaults (for `chip`, if given: see :func:`default_profile`)."""
    if spec is None:
        return default_profile(chip)
    if isinstance(spec, DeviceProfile):
        return spec
    path = Path(spec)
    if not path.exists() and path.suffix != ".json" and (shipped := preset_path("profiles", str(spec))) is not None:
        path = shipped
    if not path.exists():
        raise PathsimConfigError(str(path), "", "profile file not found",
                                 f"give a JSON profile or one of the shipped profiles: {', '.join(preset_names('profiles')) or 'none'}")
    data = read_json(path, str(path), "", "a device profile JSON written by `pathsim calibrate`")
    if not isinstance(data, dict):
        raise PathsimConfigError(str(path), "", "must hold a JSON object", "see calibration/profiles/ for the format")
    return validate_model(DeviceProfile, data, str(path))


# Passes of the matrix units' dtype one matmul of an emulated dtype takes, by model.matmul_precision: fp32 on a TPU
# as one bfloat16 pass (XLA's default), bfloat16_3x or bfloat16_6x (JAX's matmul precision docs; jax-ml/jax #18934).
EMULATION_PASSES = {"default": 1, "high": 3, "highest": 6}


class DeviceModel:
    """Kernel times on one chip from a ChipSpec and a DeviceProfile.

    A measured profile carries its own peak rate and bandwidth per dtype, so
    `chip` may be None for it (calibration predicts kernels this way).
    """

    def __init__(self, chip: ChipSpec | None, dtype: str, profile: DeviceProfile | None = None, source: str = "<workload>",
                 compute_share: float = 1.0, matmul_precision: str = "default"):
        """`compute_share`: the share of the chip's arithmetic units its compute kernels get (the rest running
        communication kernels), which scales the peak FLOP/s and leaves the HBM bandwidth. `matmul_precision`: the
        passes an emulated dtype's matmuls take (:data:`EMULATION_PASSES`); every kernel's arithmetic is priced at
        that rate, the rest being memory-bound."""
        self.profile = profile or default_profile()
        self.kernels, peak_override, bandwidth_override = self.profile.for_dtype(dtype, source)
        base = chip.matrix_dtype(dtype) if chip is not None else None
        if peak_override is not None:
            self.peak_flops = peak_override
        elif base is not None:
            self.peak_flops = chip.peak_flops[base] / (1 if base == dtype else EMULATION_PASSES[matmul_precision])
        elif chip is None:
            raise ValueError(f"profile {self.profile.name!r} has no measured peak for {dtype!r}; pass the chip")
        else:
            raise PathsimConfigError(source, "model.dtype", f"the cluster's chip ({chip.name}) has no peak rate for {dtype!r}",
                                     f"set model.dtype to one of {sorted(chip.peak_flops)} (a workload file with `extends:` "
                                     f"and `model: {{dtype: bf16}}` will do), or add {dtype} to the cluster's chip.peak_flops "
                                     f"(or, if its matrix units multiply it as passes of another dtype, to chip.emulated_dtypes)")
        if bandwidth_override is None and chip is None:
            raise ValueError(f"profile {self.profile.name!r} has no measured bandwidth for {dtype!r}; pass the chip")
        self.hbm_bandwidth = bandwidth_override or chip.hbm_bandwidth
        self.peak_flops *= compute_share

    def time_s(self, family: str, flops, nbytes=0.0):
        """Seconds for a kernel of `flops` FLOPs moving `nbytes` HBM bytes (numpy arrays broadcast)."""
        return kernel_seconds(self.kernels[family], flops, nbytes, self.peak_flops, self.hbm_bandwidth)


def kernel_seconds(k: KernelModel, flops, nbytes, peak_flops: float, hbm_bandwidth: float):
    """The device model's time for one kernel (the formula in the module docstring).

    With the saturating efficiency, flops / (peak × eff(F)) simplifies to
    (F + F_half) / (peak × flops_efficiency) for F > 0.
    """
    flops = np.asarray(flops, dtype=np.float64)
    compute = np.where(flops > 0, (flops + k.half_efficiency_flops) / (peak_flops * k.flops_efficiency), 0.0)
    memory = np.asarray(nbytes, dtype=np.float64) / (hbm_bandwidth * k.memory_efficiency)
    if k.overlap_exponent is None:
        busy = np.maximum(compute, memory)
    else:  # a soft roofline; scaled by the larger term so high exponents cannot overflow
        p, top = k.overlap_exponent, np.maximum(np.maximum(compute, memory), 1e-300)
        busy = top * ((compute / top) ** p + (memory / top) ** p) ** (1.0 / p)
    out = k.overhead_s + busy
    return out if out.ndim else float(out)
