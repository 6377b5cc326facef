"""Built-in presets: the YAML files in the source tree's ``topologies/`` and
``workloads/`` folders, shipped inside the wheel as ``pathsim/presets/<kind>/``."""

from __future__ import annotations

from pathlib import Path

PRESET_KINDS = ("topologies", "workloads")


def preset_dir(kind: str) -> Path:
    """Folder holding the presets of one kind ('topologies' or 'workloads')."""
    if kind not in PRESET_KINDS:
        raise ValueError(f"unknown preset kind {kind!r}")
    installed = Path(__file__).parent / kind  # a wheel install copies them here
    if installed.is_dir():
        return installed
    # An editable install or a plain checkout reads them where users edit them.
    return Path(__file__).resolve().parents[2] / kind


def preset_names(kind: str) -> list[str]:
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


def preset_path(kind: str, name: str) -> Path | None:
    path = preset_dir(kind) / f"{name}.yaml"
    return path if path.is_file() else None
