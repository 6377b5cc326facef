"""One calibration, end to end: measure, fit, write a profile; or measure held-out shapes against one."""

from __future__ import annotations

import datetime
import re

from pathsim.device import DeviceProfile

from pathsim.calibration.environment import describe
from pathsim.calibration.fit import fit_profile_dtypes
from pathsim.calibration.harness import FULL, QUICK, make_mesh
from pathsim.calibration.measure import measure_kernels
from pathsim.calibration.sweeps import MODES
from pathsim.calibration import collectives as coll
from pathsim.calibration.validation import ValidationReport, report

ROUNDS = {"quick": 1, "full": 3}


def default_name(device_kind: str, devices: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-")
    return f"{slug[:48].rstrip('-')}-x{devices}"


def calibrate(mode: str = "full", dtypes: tuple[str, ...] | None = None, devices: int | None = None,
              seed: int = 0, name: str | None = None, progress: bool = True) -> DeviceProfile:
    """Time every kernel variant (fit and held-out shapes) and the collectives; fit; return the profile."""
    mesh = make_mesh(devices)
    n = mesh.devices.size
    env = describe(n)
    dtypes = dtypes or MODES[mode].dtypes
    budget = QUICK if mode == "quick" else FULL
    samples = measure_kernels(mode, dtypes, budget, rounds=ROUNDS[mode], devices=n, seed=seed, progress=progress)
    network = None
    if n > 1:
        fit_samples = coll.measure_collectives(coll.SIZES[mode], mesh, budget.min_repeats, budget.min_time_s,
                                               budget.max_repeats, progress)
        network = coll.fit_network(fit_samples)
    command = f"pathsim calibrate{' --quick' if mode == 'quick' else ''} --dtypes {' '.join(dtypes)} --devices {n} --seed {seed}"
    kind = env["device_kind"]
    return DeviceProfile(
        name=name or default_name(kind, n), device_kind=kind, source=command,
        created=datetime.date.today().isoformat(), versions=env["versions"], host=env["host"], devices=n,
        sweep=mode, seed=seed, dtypes=fit_profile_dtypes(samples), network=network, samples=samples)


def validate(profile: DeviceProfile, mode: str | None = None, devices: int | None = None, seed: int | None = None,
             progress: bool = True) -> ValidationReport:
    """Measure the held-out shapes now, on this machine, and compare them with the profile's predictions."""
    mode = mode or profile.sweep or "full"
    seed = profile.seed if seed is None else seed
    mesh = make_mesh(devices or profile.devices)
    budget = QUICK if mode == "quick" else FULL
    held_out = measure_kernels(mode, tuple(profile.dtypes), budget, rounds=ROUNDS[mode], devices=mesh.devices.size,
                               fit=False, seed=seed + 1, progress=progress)
    collectives = []
    if profile.network is not None and mesh.devices.size > 1:
        collectives = coll.measure_collectives(coll.HELD_OUT_SIZES[mode], mesh, budget.min_repeats, budget.min_time_s,
                                               budget.max_repeats, progress)
    return report(profile, held_out, collectives)


def stored_validation(profile: DeviceProfile) -> ValidationReport:
    """The held-out shapes timed during calibration itself, against the fit."""
    return report(profile, [s for s in profile.samples if s.held_out], [])
