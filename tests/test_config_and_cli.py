"""Presets, `extends:`, and the bad-input corpus: exit 2, the field named, never a traceback."""

import json
import re
import subprocess
import sys

import pytest

from pathsim.cli import main
from pathsim.cluster import load_cluster
from pathsim.errors import PathsimConfigError
from pathsim.presets import preset_names
from pathsim.topology import build_topology

REQUIRED_PRESETS = ["tpu-v3-4x4", "tpu-v3-32x32", "tpu-v4-4x4x4", "tpu-v4-4x4x8", "tpu-v4-4x8x8", "tpu-v4-8x8x8",
                    "tpu-v4-8x8x16", "tpu-v4-16x16x16", "tpu-v4-4x4x8-twisted", "tpu-v4-4x8x8-twisted",
                    "tpu-v4-8x8x16-twisted", "tpu-v5p-8x8x8", "dgx-h100-1", "dgx-h100-4", "dgx-h100-32",
                    "dgx-h100-128", "dgx-a100-4"]


@pytest.mark.parametrize("name", preset_names("topologies"))
def test_every_preset_loads_builds_and_cites_sources(name):
    cluster = load_cluster(name)
    topology = build_topology(cluster)
    assert topology.num_chips == cluster.num_chips
    assert cluster.chip.source and cluster.host.source and all(link.source for link in cluster.links.values())


def test_required_presets_exist():
    assert set(REQUIRED_PRESETS) <= set(preset_names("topologies"))


def test_extends_overrides_and_keeps_the_rest(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tpu-v4-8x8x8\nname: mine\nlinks:\n  ici: {bandwidth: 25GB/s}\n")
    cluster = load_cluster(path)
    assert cluster.links["ici"].bandwidth == 25e9
    assert cluster.links["ici"].latency == 1e-6  # inherited
    assert cluster.topology.dims == [8, 8, 8]


def write(tmp_path, text, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_FILES = [
    ("missing field", "name: x\nlinks: {}\nhost: {chips_per_host: 4, power: 1W, source: s}\n"
     "topology: {kind: torus, dims: [4]}\n", "chip"),
    ("unknown field", "extends: tpu-v4-4x4x4\nname: x\ntopology: {dimz: [4, 4, 4]}\n", "topology.dimz"),
    ("wrong unit", "extends: tpu-v4-4x4x4\nname: x\nlinks: {ici: {bandwidth: 50GB}}\n", "links.ici.bandwidth"),
    ("negative size", "extends: tpu-v4-4x4x4\nname: x\nchip: {hbm_bytes: -32GiB}\n", "chip.hbm_bytes"),
    ("zero bandwidth", "extends: tpu-v4-4x4x4\nname: x\nlinks: {ici: {bandwidth: 0GB/s}}\n", "links.ici.bandwidth"),
    ("unknown link class", "extends: tpu-v4-4x4x4\nname: x\ntopology: {link: optical}\n", "topology"),
    ("bad kind", "extends: tpu-v4-4x4x4\nname: x\ntopology: {kind: hypercube}\n", "topology.kind"),
    ("bad twist", "extends: tpu-v4-4x4x4\nname: x\ntopology: {twisted: true}\n", "topology"),
    ("unknown parent", "extends: tpu-v9-4x4x4\nname: x\n", "extends"),
    ("disconnected graph", "extends: example-dumbbell-8\nname: x\ntopology:\n  kind: graph\n  chips: 4\n"
     "  edges: [{a: 0, b: 1, link: ici}, {a: 2, b: 3, link: ici}]\n", "topology"),
    ("not YAML", "name: [unclosed\n", ""),
    ("not a mapping", "- just\n- a list\n", ""),
    ("twisted long dimension first", "extends: tpu-v4-4x4x4\nname: x\ntopology: {dims: [8, 4, 4], twisted: true}\n", "topology"),
    ("oversubscription leaves no uplinks", "extends: dgx-h100-4\nname: x\ntopology: {oversubscription: 1e20}\n", "topology"),
    ("infinite oversubscription", "extends: dgx-h100-4\nname: x\ntopology: {oversubscription: .inf}\n", "topology.oversubscription"),
    ("too many chips", "extends: tpu-v4-4x4x4\nname: x\ntopology: {dims: [100000, 100000, 100000]}\n", "topology"),
    ("absurd dimension", "extends: tpu-v4-4x4x4\nname: x\ntopology: {dims: [99999999999999999999999]}\n", "topology"),
    ("boolean as a dimension", "extends: tpu-v4-4x4x4\nname: x\ntopology: {dims: [true, 4]}\n", "topology.dims[0]"),
    ("denormal bandwidth", "extends: tpu-v4-4x4x4\nname: x\nlinks: {ici: {bandwidth: 1e-320}}\n", "links.ici.bandwidth"),
    ("wraparound length", "extends: tpu-v4-4x4x4\nname: x\ntopology: {wraparound: [true, true]}\n", "topology"),
    # Found by benchmarks/bad_input_corpus.py (each was an OverflowError traceback):
    ("chips per host beyond int64", "extends: tpu-v4-4x4x4\nname: x\nhost: {chips_per_host: 9223372036854775808}\n",
     "host.chips_per_host"),
    ("oversubscription overflowing a switch count", "extends: dgx-h100-4\nname: x\ntopology: {oversubscription: 1e308}\n",
     "topology.oversubscription"),
]


@pytest.mark.parametrize("case, text, field", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_config_files_exit_2_naming_file_and_field(tmp_path, capsys, case, text, field):
    path = write(tmp_path, text)
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pathsim: error: ") and path in err
    assert f"{path}: {field}" in err if field else True
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("argv, needle", [
    (["validate", "/no/such/file.yaml"], "file not found"),
    (["collective", "--cluster", "tpu-v4-9x9x9", "--op", "all_to_all", "--bytes", "1MiB"], "not a known topology preset"),
    (["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_to_all", "--bytes=-1MiB"], "bytes"),
    (["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_to_all", "--bytes", "1 furlong"], "bytes"),
    (["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_reduce", "--bytes", "1MiB", "--groups", "5"], "groups"),
])
def test_bad_arguments_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_unknown_op_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["collective", "--cluster", "tpu-v4-4x4x4", "--op", "broadcast", "--bytes", "1MiB"])
    assert info.value.code == 2


def test_collective_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "res" / "a2a.json"
    assert main(["collective", "--cluster", "tpu-v4-4x4x8", "--op", "all_to_all", "--bytes", "64MiB", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["op"] == "all_to_all" and data["ranks_per_group"] == 128
    # 4x4x8 uniform all-to-all: the bisection bound S/B (see test_torus) plus 8 hops of latency
    assert data["bandwidth_time_s"] == pytest.approx(64 * 2**20 / 50e9, rel=0.01)
    assert "all-to-all" in printed and "hottest links" in printed


def test_matrix_file_feeds_all_to_all(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("0,1e6,0,0\n0,0,0,0\n0,0,0,0\n0,0,0,0\n")
    assert main(["collective", "--cluster", "tpu-v3-4x4", "--op", "all_to_all", "--bytes", "1MB", "--groups", "4",
                 "--matrix", str(path)]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3\n")
    assert main(["collective", "--cluster", "tpu-v3-4x4", "--op", "all_to_all", "--bytes", "1MB", "--matrix", str(bad)]) == 2


def test_console_script_reports_errors_without_traceback(tmp_path):
    path = write(tmp_path, "extends: tpu-v4-4x4x4\nname: x\nlinks: {ici: {latency: 2 fortnights}}\n")
    proc = subprocess.run([sys.executable, "-m", "pathsim.cli", "validate", path], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "links.ici.latency" in proc.stderr and "Traceback" not in proc.stderr


def test_python_api_raises_the_same_error(tmp_path):
    with pytest.raises(PathsimConfigError) as info:
        load_cluster(write(tmp_path, "extends: tpu-v4-4x4x4\nname: x\nhost: {chips_per_host: 0}\n"))
    assert info.value.field == "host.chips_per_host"



def test_the_package_list_ships_every_subpackage():
    # pyproject lists packages explicitly (the presets map folders outside pathsim/): a subpackage left off it is
    # missing from a wheel, and a non-editable install fails on import.
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "pathsim").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_the_command_line_answers_before_the_simulator_is_imported():
    # `pathsim --help`, a bad flag and `presets` must be instant: they may not import numpy, scipy or the simulator.
    code = ("import sys; from pathsim.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['presets', '--kind', 'profiles'])\n"
            "heavy = sorted(m for m in ('numpy', 'scipy', 'pydantic', 'simpy', 'matplotlib', 'pathsim.simulation') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
    import pathsim  # the lazy package still hands out its whole API
    assert pathsim.simulate.__module__ == "pathsim.simulation" and set(pathsim.__all__) <= set(dir(pathsim))


def test_version_and_the_names_the_parser_offers(capsys):
    from pathsim.network import MODELS
    from pathsim.choices import NETWORK_MODELS
    from pathsim.version import __version__
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"pathsim {__version__}"
    assert tuple(MODELS) == NETWORK_MODELS  # the parser's choices are what the simulator implements


def test_calibrate_without_jax_says_what_to_install():
    code = "import sys; sys.modules['jax'] = None\nfrom pathsim.cli import main\nsys.exit(main(['calibrate', '--quick']))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and 'pip install "pathsim[calibrate]"' in done.stderr and "Traceback" not in done.stderr


def test_a_profile_of_another_chip_kind_is_refused_unless_forced(capsys, tmp_path):
    argv = ["simulate", "--cluster", "dgx-h100-1", "--workload", "mixtral-8x7b", "--profile", "cpu-epyc-2core-x8"]
    assert main(argv) == 2  # it predicted 35.8 days a step: a CPU's fitted rates standing in for an H100's
    err = capsys.readouterr().err
    assert "(cpu), but the cluster's chips are 'NVIDIA H100 SXM5 80GB' (h100)" in err and "--force-profile" in err
    assert main(argv + ["--force-profile", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["inputs"]["device_profile"]["other_chips"] is True  # on the record
    assert main(argv[:5] + ["--force-profile"]) == 2 and "there is none" in capsys.readouterr().err


@pytest.mark.parametrize("name, family", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 SXM5 80GB", "h100"),
                                          ("TPU v5 lite", "tpu v5e"), ("TPU v5e", "tpu v5e"), ("TPU v5", "tpu v5p"),
                                          ("Tesla V100-SXM2-16GB", "v100"), ("cpu: AMD EPYC", "cpu"), ("My own ASIC", None)])
def test_chip_kinds_read_the_same_from_jax_and_from_presets(name, family):
    from pathsim.device import chip_family
    assert chip_family(name) == family


@pytest.mark.parametrize("argv, where, fix", [
    (["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--time-budget", "-5"], "<command line>: --time-budget:",
     "pathsim plan --help"),  # the flag, not the internal field time_budget_s
    (["plan", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--eplb-groups", "0"], "<command line>: --eplb-groups:",
     "pathsim plan --help"),
])
def test_refusals_point_where_the_user_can_act(capsys, argv, where, fix):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert where in err and fix in err and "built-in presets" not in err


def test_a_bad_profile_or_placement_value_points_at_the_command_that_writes_them(tmp_path):
    from pathsim.device import load_profile
    from pathsim.placement import read_placement
    profile = json.loads(load_profile("cpu-epyc-2core-x8").model_dump_json())
    profile["devices"] = 0
    (tmp_path / "p.json").write_text(json.dumps(profile))
    with pytest.raises(PathsimConfigError, match=r"devices: .*\n  fix: write profiles with `pathsim calibrate`"):
        load_profile(tmp_path / "p.json")
    (tmp_path / "pl.json").write_text(json.dumps({"policy": "x", "experts": -1, "ranks": 1, "slots": [[[0]]]}))
    with pytest.raises(PathsimConfigError, match=r"fix: write placements with `pathsim plan --out"):
        read_placement(tmp_path / "pl.json")


def test_validate_recognises_every_kind_of_file_pathsim_reads(tmp_path, capsys):
    from pathsim.presets import preset_dir
    (tmp_path / "mine.yaml").write_text("extends: switch-base-128\nname: mine\n")
    (tmp_path / "mine2.yaml").write_text("extends: mine.yaml\nname: mine2\n")  # a workload only through its parent file
    (tmp_path / "c.yaml").write_text("extends: dgx-h100-4\nname: c\n")
    task = preset_dir("workloads") / "added-tasks" / "sign-language-video.yaml"
    pod = preset_dir("shared-pods") / "two-jobs-one-torus-tpu-v4.yaml"
    files = [str(tmp_path / "mine2.yaml"), str(tmp_path / "c.yaml"), str(task), str(pod), "two-jobs-one-torus-tpu-v4"]
    assert main(["validate", *files]) == 0
    # One record per file; a record longer than the width wraps onto indented lines.
    out = [" ".join(record.split()) for record in re.split(r"\n(?=\S)", capsys.readouterr().out.strip())]
    assert len(out) == 5 and "ok - workload mine2" in out[0] and "ok - c: 32 x NVIDIA H100" in out[1]
    assert "ok - task to add sign-language-video" in out[2] and "ok - shared pod two-jobs-one-torus-tpu-v4: 2 jobs" in out[3]
    assert "ok - shared pod" in out[4]


def test_the_readme_examples_write_into_the_ignored_out_folder():
    # A new user pastes them into a checkout: outputs go to out/ (in .gitignore), never among the tracked files.
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    written = re.findall(r"--(?:out|json|trace|residuals)[ =](\S+)", "\n".join(blocks))
    assert written and all(path.startswith("out/") for path in written), written
    assert "/out/" in (root / ".gitignore").read_text().split()


@pytest.mark.parametrize("argv", [
    ["collective", "--cluster", "tpu-v4-4x4x4", "--op", "all_reduce", "--bytes", "1MiB"],
    ["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128"],
])
def test_results_pipe_into_other_tools_as_json_or_csv(capsys, tmp_path, argv):
    import csv as csv_module
    assert main(argv + ["--format", "json", "--json", str(tmp_path / "r.json")]) == 0
    captured = capsys.readouterr()
    piped = json.loads(captured.out)  # stdout is the result alone: "wrote ..." went to stderr
    assert piped == json.loads((tmp_path / "r.json").read_text()) and "wrote" in captured.err
    assert main(argv + ["--format", "csv"]) == 0
    rows = list(csv_module.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["field", "value"] and ["cluster", "tpu-v4-4x4x4"] in rows
    assert main(argv) == 0 and "tpu-v4-4x4x4" in capsys.readouterr().out.splitlines()[0]  # the table, for people


def test_a_dense_run_prints_no_moe_only_lines(capsys):
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "palm-8b"]) == 0
    dense = capsys.readouterr().out
    assert main(["simulate", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128"]) == 0
    sparse = capsys.readouterr().out
    for line in ("dropped tokens", "all to all", "straggler", "expert slot(s)", "all-to-all "):
        assert line not in dense and line in sparse, line


def test_every_subcommand_describes_itself_with_examples_that_parse():
    import shlex
    from pathsim.cli import EXAMPLES, _parser
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name, command in commands.items():
        assert command.description and command.epilog.startswith("examples:"), name
        for example in EXAMPLES[name]:
            words = shlex.split(example, comments=True)
            words = words[:words.index(">")] if ">" in words else words  # the shell's redirection is not pathsim's
            args = parser.parse_args(words[1:])  # argparse accepts it (files are read only when run)
            assert args.command == name
