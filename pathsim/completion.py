"""Shell completion for the ``pathsim`` command: a script generated from the command's own parser.

shtab writes the script from argparse, so every subcommand, flag and choice the
parser knows completes, and a new flag completes without an edit here. Flags
that take a preset or a file (``--cluster``, ``--workload``, a shared-pod file)
complete both the preset names and paths. The names are written into the script
when it is generated (they ship with the package), so pressing TAB runs no
Python: completion is as fast as the shell's own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHELLS = ("bash", "zsh")

# Flags that take a name or a file, by the argparse dest of their action: the preset kind whose names they take
# (None: any kind), or their own words.
NAME_OR_FILE_FLAGS = {"cluster": "topologies", "compare_cluster": "topologies", "workload": "workloads",
                      "jobs": "shared-pods", "profile": "profiles", "validate": "profiles", "end_to_end": "profiles",
                      "only": "validation", "files": None, "placement": "policies"}
# (command, dest) of the path flags that name a folder; every other path flag names a file.
FOLDER_FLAGS = {("report", "out"), ("fidelity", "out")}


def _words_or_file(key: str, words: list[str]) -> dict:
    """A shtab completer: these words, and paths (a preset name or a file is what the flag takes)."""
    listed = " ".join(words)
    function = f"_pathsim_{key.replace('-', '_')}"
    return {
        "bash": function,
        "zsh": function,
        "preamble": {
            # bash: shtab calls the function with the word so far and takes its lines as candidates.
            "bash": f'{function}() {{\n  compgen -W "{listed}" -- "$1"\n  compgen -f -- "$1"\n}}\n',
            "zsh": f"{function}() {{\n  _alternative 'names:name:({listed})' 'files:file:_files'\n}}\n",
        },
    }


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` for `shell` (one of SHELLS)."""
    import shtab

    from pathsim.choices import POLICIES
    from pathsim.presets import PRESET_KINDS, preset_names

    def words(key: str | None) -> list[str]:
        if key == "policies":
            return list(POLICIES)
        return sorted({n for kind in ([key] if key else PRESET_KINDS) for n in preset_names(kind)})

    completers = {key: _words_or_file(key or "any", words(key)) for key in set(NAME_OR_FILE_FLAGS.values())}
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in subparsers.choices.items():
        for action in command._actions:
            if action.dest in NAME_OR_FILE_FLAGS:
                action.complete = completers[NAME_OR_FILE_FLAGS[action.dest]]
            elif action.type is Path:
                action.complete = shtab.DIRECTORY if (name, action.dest) in FOLDER_FLAGS else shtab.FILE
    return shtab.complete(parser, shell=shell)
