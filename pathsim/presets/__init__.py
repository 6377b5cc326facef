"""Built-in presets: the files in the source tree's ``topologies/``, ``workloads/``,
``validation/`` and ``calibration/profiles/`` folders, shipped inside the wheel (as
``pathsim/presets/<kind>/`` and ``pathsim/calibration/profiles/``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

PRESET_KINDS = ("topologies", "workloads", "profiles", "economics", "shared-pods", "validation")
# kind -> (folder under the installed pathsim package, folder in a checkout, file suffix)
_LOCATIONS = {
    "topologies": ("presets/topologies", "topologies", ".yaml"),
    "workloads": ("presets/workloads", "workloads", ".yaml"),
    "profiles": ("calibration/profiles", "calibration/profiles", ".json"),
    "economics": ("presets/topologies/economics", "topologies/economics", ".yaml"),  # prices, grid intensity, PUE
    "shared-pods": ("presets/workloads/shared-pods", "workloads/shared-pods", ".yaml"),  # several jobs on one cluster
    "validation": ("presets/validation", "validation", ".yaml"),  # published measurements (pathsim.fidelity)
}


from pathsim.console import width

def preset_dir(kind: str) -> Path:
    """Folder holding the presets of one kind."""
    if kind not in PRESET_KINDS:
        raise ValueError(f"unknown preset kind {kind!r}")
    installed_rel, checkout_rel, _ = _LOCATIONS[kind]
    installed = Path(__file__).parent.parent / installed_rel  # a wheel install copies them here
    if installed.is_dir():
        return installed
    # An editable install or a plain checkout reads them where users edit them.
    return Path(__file__).resolve().parents[2] / checkout_rel


def preset_names(kind: str) -> list[str]:
    return sorted(p.stem for p in preset_dir(kind).glob(f"*{_LOCATIONS[kind][2]}"))


def preset_path(kind: str, name: str) -> Path | None:
    path = preset_dir(kind) / f"{name}{_LOCATIONS[kind][2]}"
    return path if path.is_file() else None


def describe(kind: str, name: str) -> str:
    """A preset's one-line description, read without validating it (listing presets must stay instant)."""
    from pathsim.input_files import parse_yaml, read_json, read_text

    path = preset_path(kind, name)
    if kind == "profiles":
        data = read_json(path, str(path), "", "a device profile")
        return f"{data.get('device_kind', '?')}; {', '.join(data.get('dtypes', {}))}; measured {data.get('created', '?')}"
    data = parse_yaml(read_text(path, str(path), "", "a preset"), str(path))
    if not isinstance(data, dict):
        return ""
    if kind == "validation":  # an entry says what was measured, on what
        return f"measured {data.get('measured', '?')} {data.get('unit', '')} ({', '.join(map(str, data.get('tags', [])))})"
    return str(data.get("description", ""))


def print_presets(args) -> int:
    """`pathsim presets [--kind KIND]`: every built-in preset, with its description."""
    for kind in ([args.kind] if args.kind else PRESET_KINDS):
        names = preset_names(kind)
        print(f"{kind}:" + ("" if names else " (none yet)"))
        for name in names:  # the description wraps under itself, so the names stay a column
            print(textwrap.fill(f"  {name:28s} {describe(kind, name)}", width(), subsequent_indent=" " * 31,
                                break_on_hyphens=False, break_long_words=False))
    return 0
