"""Shell completion: the generated bash script, run by a real bash, completes subcommands, flags, choices,
preset names and paths; the zsh script names the same completers."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess

import pytest

from pathsim.cli import main
from pathsim.presets import preset_names

BASH = shutil.which("bash")


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "pathsim.bash"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["completion", "bash"]) == 0
    path.write_text(buffer.getvalue())
    return path


def complete(script, *words: str, cwd=None) -> list[str]:
    """What bash offers for the last of `words` (the line typed so far), as the shell's TAB would."""
    program = f"""source {script}
COMP_WORDS=({' '.join(f"'{w}'" for w in words)}); COMP_CWORD={len(words) - 1}
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()
_shtab_pathsim pathsim "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    run = subprocess.run([BASH, "-c", program], capture_output=True, text=True, cwd=cwd, timeout=30)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line]


@pytest.mark.parametrize("words, expected", [
    (("pathsim", "sim"), ["simulate"]),
    (("pathsim", "simulate", "--clu"), ["--cluster"]),
    (("pathsim", "collective", "--op", "all_t"), ["all_to_all"]),  # argparse choices
    (("pathsim", "simulate", "--placement", "ba"), ["balanced"]),  # a policy, or a placement file
    (("pathsim", "share", "two-moe-jobs-dgx-h100-128-"), ["two-moe-jobs-dgx-h100-128-4to1"]),
])
def test_bash_completes_what_the_parser_takes(bash_script, words, expected):
    assert complete(bash_script, *words) == expected


def test_bash_completes_preset_names_and_files(bash_script, tmp_path):
    offered = complete(bash_script, "pathsim", "simulate", "--cluster", "tpu-v4-8x8x")
    assert offered == sorted(n for n in preset_names("topologies") if n.startswith("tpu-v4-8x8x"))
    (tmp_path / "tpu-v4-mine.yaml").write_text("")
    assert "tpu-v4-mine.yaml" in complete(bash_script, "pathsim", "simulate", "--cluster", "tpu-v4-m", cwd=tmp_path)
    assert complete(bash_script, "pathsim", "simulate", "--workload", "mixtral") == ["mixtral-8x7b"]


def test_zsh_script_completes_presets_and_files(capsys):
    assert main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef pathsim")
    assert ":cluster:_pathsim_topologies" in script and ":workload:_pathsim_workloads" in script
    assert "_alternative 'names:name:(" in script and "'files:file:_files'" in script


def test_an_unknown_shell_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["completion", "tcsh"])
    assert exit_.value.code == 2 and "invalid choice: 'tcsh' (choose from 'bash', 'zsh')" in capsys.readouterr().err
