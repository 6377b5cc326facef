"""`pathsim report`: the files it writes, that they agree with each other, and its errors."""

import base64
import csv
import html
import json
import re
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml
from hypothesis import given, strategies as st
from matplotlib.image import imread

from pathsim.cli import main
from pathsim.report import build_report, write_report
from pathsim.report.content import pareto_front
from pathsim.report.render import fmt

XHTML = "{http://www.w3.org/1999/xhtml}"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = build_report("tpu-v4-4x4x4", "pathways-multitask", compare_clusters=("tpu-v5p-4x4x4", "dgx-h100-4"),
                          run_tokens=1e10, deadline_s=86400.0, steps=1)
    write_report(report, out)
    return report, out


def _png_ok(data: bytes, where: str):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", where
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100, where
    pixels = imread(__import__("io").BytesIO(data), format="png")
    assert pixels.std() > 0.01, f"{where} is blank"


def test_html_parses_and_every_embedded_figure_is_a_real_png(written):
    report, out = written
    root = ET.parse(out / "index.html").getroot()  # strict XML parser: any unbalanced tag fails
    images = list(root.iter(f"{XHTML}img"))
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert len(images) == len(figures) == 6  # breakdown, timeline, links, expert load, energy, cost vs time
    for image in images:
        head, _, encoded = image.get("src").partition(",")
        assert head == "data:image/png;base64"
        _png_ok(base64.b64decode(encoded), image.get("alt"))
    for name in figures:
        _png_ok((out / "figures" / f"{name}.png").read_bytes(), name)
        with open(out / "data" / f"{name}.csv") as f:
            rows = list(csv.reader(f))
        assert len(rows) > 1, name


def _markdown_tables(text: str) -> dict[str, list[list[str]]]:
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("| ") and heading:
            # What a reader sees: Markdown's backslash escapes and HTML entities undone.
            cells = [html.unescape(re.sub(r"\\(.)", r"\1", c.strip())) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables.setdefault(heading, []).append(cells)
    return {k: rows[1:] for k, rows in tables.items()}  # drop the header row (the --- row has no leading "| ")


def _matches(cell: str, value) -> bool:
    if value is None:
        return cell == "-"
    if isinstance(value, bool):
        return cell == ("yes" if value else "no")
    number = float(cell.replace(",", ""))
    return abs(number - value) <= max(0.5 if abs(value) >= 1000 else 0.0, 5e-4 * abs(value))


def test_every_number_in_the_markdown_matches_the_json(written):
    _, out = written
    data = json.loads((out / "report.json").read_text())
    tables = _markdown_tables((out / "summary.md").read_text())
    headline = tables["Headline"]
    assert [r[0] for r in headline] == [h["metric"] for h in data["headline"]]
    for row, h in zip(headline, data["headline"]):
        assert all(_matches(c, h[k]) for c, k in zip(row[2:], ("per_step", "per_million_tokens", "per_run"))), row
    variants = tables["Sparse against dense"]
    first = data["variants"][0]["footprint"]["per_million_tokens"]["facility_kwh"]
    for row, v in zip(variants, data["variants"], strict=True):
        per_m = v["footprint"]["per_million_tokens"]
        expected = (v["result"]["step_time"]["mean_s"], per_m["facility_kwh"], per_m["usd"], per_m["facility_kwh"] / first)
        assert row[0] == v["label"] and all(_matches(c, x) for c, x in zip(row[1:], expected)), row
    clusters = tables["Clusters"]
    for row, o in zip(clusters, data["clusters"], strict=True):
        expected = (o["chips"], o["usd_per_chip_hour"], o["time_s"], o["usd"], o["facility_kwh"], o["tco2e"], o["memory_fits"],
                    o["pareto"], o["meets_deadline"])
        assert row[0] == o["cluster"] and row[2] == o["price_term"]
        assert all(_matches(c, x) for c, x in zip(row[1:2] + row[3:], expected)), row


def test_report_content_is_consistent(written):
    report, out = written
    assert {v.key for v in report.variants} == {"sparse", "dense_active_flops", "dense_total_params"}
    main_option = [o for o in report.clusters if o.cluster == report.cluster and o.price_term == "on_demand"][0]
    assert main_option.usd == report.main.footprint.per_run.usd
    # 143 GiB a chip on 32 GiB TPU v4s: nothing fits, so nothing is on the front and nothing is recommended.
    assert report.verdict.startswith("DOES NOT FIT") and not any(o.memory_fits or o.pareto for o in report.clusters)
    assert report.recommendation.startswith("No candidate fits in HBM and meets the deadline")
    assert all(o.meets_deadline == (o.time_s <= 86400.0) for o in report.clusters)
    with open(out / "data" / "link_utilisation.csv") as f:
        assert len(list(csv.reader(f))) - 1 == len(report.main.result.detail.link_utilisation)
    # Determinism: the same inputs give the same report, bit for bit.
    again = build_report("tpu-v4-4x4x4", "pathways-multitask", compare_clusters=("tpu-v5p-4x4x4", "dgx-h100-4"),
                         run_tokens=1e10, deadline_s=86400.0, steps=1)
    assert again.model_dump_json() == report.model_dump_json()


@pytest.mark.parametrize("cluster,workload", [("dgx-h100-4", "mixtral-8x7b"), ("example-dumbbell-8", "switch-base-128"),
                                              ("tpu-v3-4x4", "switch-base-128")])
def test_figures_draw_on_every_kind_of_topology(tmp_path, cluster, workload):
    report = build_report(cluster, workload, steps=1, dense="none", price=1.0, grid_intensity=0.5, pue=1.2)
    write_report(report, tmp_path)
    _png_ok((tmp_path / "figures" / "link_utilisation.png").read_bytes(), cluster)
    assert report.comparison is None and report.basis == "million_tokens"


def test_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--run-steps", "1000",
                 "--steps", "1", "--dense", "total_params", "--price", "commit_3y", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per run" in text and (out / "index.html").is_file() and (out / "summary.md").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["run_steps"] == 1000 and data["variants"][0]["footprint"]["site"]["price_term"] == "commit_3y"


@pytest.mark.parametrize("args,named", [
    (["--region", "atlantis"], "region"),
    (["--pue", "0.5"], "pue"),
    (["--price", "-3"], "price"),
    (["--run-tokens", "lots"], "--run-tokens"),
    (["--deadline", "soon"], "--deadline"),
    (["--deadline", "30d"], "deadline"),  # a deadline without a run
    (["--run-tokens", "1T", "--run-steps", "5"], "run_steps"),
    (["--compare-cluster", "dgx-h100-4", "--price", "2.0"], "price"),  # one USD price for two different chips
    (["--compare-cluster", "no-such-cluster"], "no-such-cluster"),
])
def test_bad_report_input_exits_2_naming_the_field(tmp_path, capsys, args, named):
    code = main(["report", "--cluster", "tpu-v4-4x4x4", "--workload", "switch-base-128", "--steps", "1",
                 "--out", str(tmp_path / "r")] + args)
    err = capsys.readouterr().err
    assert code == 2 and named in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_a_chip_without_a_price_and_a_negative_power_exit_2(tmp_path, capsys):
    unpriced = tmp_path / "unpriced.yaml"
    unpriced.write_text(yaml.safe_dump({"extends": "tpu-v4-4x4x4", "chip": {"name": "Homemade TPU"}}))
    assert main(["report", "--cluster", str(unpriced), "--workload", "switch-base-128", "--out", str(tmp_path / "r")]) == 2
    assert "price" in capsys.readouterr().err
    negative = tmp_path / "negative.yaml"
    negative.write_text(yaml.safe_dump({"extends": "tpu-v4-4x4x4", "chip": {"peak_power": "-192W"}}))
    assert main(["report", "--cluster", str(negative), "--workload", "switch-base-128", "--out", str(tmp_path / "r")]) == 2
    assert "chip.peak_power" in capsys.readouterr().err


@given(st.lists(st.tuples(st.floats(0.1, 100), st.floats(0.1, 100)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_undominated_points(points):
    front = set(pareto_front(points))

    def dominated(i):
        return any(q[0] <= points[i][0] and q[1] <= points[i][1] and q != points[i] for q in points)

    for i in range(len(points)):
        if i in front:
            assert not dominated(i)
        else:  # dominated, or a duplicate of a front point
            assert dominated(i) or any(points[j] == points[i] for j in front)


def test_fmt_keeps_four_significant_figures():
    assert [fmt(x) for x in (0, 0.000123456, 1.23456, 999.94, 1234.5, None, True)] == \
        ["0", "0.0001235", "1.235", "999.9", "1,234", "-", "yes"]
    assert np.isclose(float(fmt(1234567.8).replace(",", "")), 1234568)


HOSTILE = '=HYPERLINK("http://e.vil") $\\bogus$ <script>alert(1)</script> [x](http://e.vil) # _b_'


def test_a_hostile_name_draws_as_plain_text_and_stays_inert_in_every_file(tmp_path):
    from pathsim.report import build_report, write_report
    workload = tmp_path / "w.yaml"
    workload.write_text(yaml.safe_dump({"extends": "switch-base-128", "name": HOSTILE}))
    # `$\bogus$` is not TeX matplotlib knows: parsed as mathtext, it would fail the figure that shows the name.
    write_report(build_report("tpu-v4-4x4x4", str(workload), dense="none"), tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert summary.startswith("# =HYPERLINK") and "<script>" not in summary
    assert "\\[x\\](http://e.vil) \\# \\_b\\_" in summary  # a literal link, heading mark and emphasis, not markup
    cells = [row[0] for row in csv.reader(open(tmp_path / "out" / "data" / "energy.csv")) if HOSTILE in row[0]]
    assert cells and all(c.startswith("'=HYPERLINK") for c in cells)  # a spreadsheet shows it, does not run it
    assert json.loads((tmp_path / "out" / "report.json").read_text())["workload"] == HOSTILE  # data stays as given


def test_a_run_that_does_not_fit_says_so_and_stays_off_the_front(tmp_path):
    from pathsim.report import build_report
    small = tmp_path / "small-hbm.yaml"
    small.write_text("extends: tpu-v4-4x4x4\nname: small-hbm\nchip: {hbm_bytes: 4GiB}\n")
    report = build_report(str(small), "switch-base-128", compare_clusters=("tpu-v4-4x4x4",), dense="none")
    assert report.verdict.startswith("DOES NOT FIT in HBM: 15.47 GiB per chip against 4 GiB")
    mine = [o for o in report.clusters if o.cluster == "small-hbm"]
    other = [o for o in report.clusters if o.cluster == "tpu-v4-4x4x4"]
    assert mine and not any(o.memory_fits or o.pareto for o in mine)
    # Same chips and prices, so the small-HBM options would tie the others on time and money; only fitting ones count.
    assert any(o.pareto for o in other)
    cheapest = min(other, key=lambda o: o.usd)
    assert report.recommendation.startswith(f"Pick tpu-v4-4x4x4 at {cheapest.price_term.replace('_', ' ')} (64 chips): the cheapest that fits")
    alone = build_report(str(small), "switch-base-128", dense="none")
    assert alone.recommendation == "No candidate fits in HBM: none can be recommended."


def test_the_report_api_is_public_and_takes_the_command_lines_unit_strings():
    import pathsim
    assert {"build_report", "write_report", "Report", "Footprint", "resolve_site"} <= set(pathsim.__all__)
    from_strings = pathsim.build_report("tpu-v4-4x4x4", "switch-base-128", run_tokens="10B", deadline_s="1d", dense="none", steps=1)
    from_numbers = pathsim.build_report("tpu-v4-4x4x4", "switch-base-128", run_tokens=1e10, deadline_s=86400.0, dense="none", steps=1)
    assert from_strings.model_dump_json() == from_numbers.model_dump_json()
    with pytest.raises(pathsim.PathsimConfigError, match="deadline_s"):
        pathsim.build_report("tpu-v4-4x4x4", "switch-base-128", deadline_s="soon")


def test_link_utilisation_is_drawn_on_an_absolute_scale():
    from pathsim import simulate
    from pathsim.report.figures import link_figure
    result = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, detail=True)
    busiest = max(result.detail.link_utilisation)
    assert 0 < busiest < 1
    drawn = link_figure(result)
    assert {image.norm.vmax for ax in drawn.figure.axes for image in ax.images} == {1.0}  # not the busiest link's share


def _boxes(figure):
    """Every axes' drawn extent and the footnote's, in display pixels, as the saved PNG lays them out."""
    from pathsim.report.figures import _FOOTER, _renderer, png_bytes
    png_bytes(figure)  # places the footnote
    renderer = _renderer(figure)
    footer = next(t for t in figure.texts if t.get_gid() == _FOOTER).get_window_extent(renderer)
    return [ax.get_tightbbox(renderer) for ax in figure.axes], footer


def test_a_footnote_sits_below_the_axis_labels_however_short_the_figure():
    from pathsim import simulate
    from pathsim.report.figures import expert_load_figure
    result = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, detail=True)  # one task: the shortest heat map
    drawn = expert_load_figure(result)
    axes, footer = _boxes(drawn.figure)
    assert footer.y1 < min(box.y0 for box in axes)  # wholly below the x label, which it used to print over


def test_the_timeline_has_a_row_per_stream_that_ran_and_reads_in_the_step_unit():
    from pathsim import simulate
    from pathsim.report.figures import gantt_figure
    result = simulate("tpu-v4-4x4x4", "switch-base-128", steps=1, detail=True)  # no tensor parallelism
    drawn = gantt_figure(result)
    rows = [label.get_text() for label in drawn.figure.axes[0].get_yticklabels()]
    assert rows == ["compute", "all-to-all", "gradient sync"]
    legend = [t.get_text() for t in drawn.figure.axes[0].get_legend().get_texts()]
    assert "tensor-parallel" not in legend and "optimizer" in legend
    assert result.step_time.mean_s < 1 and drawn.figure.axes[1].get_xlabel() == "time in the step (ms)"


def _options(points):
    from pathsim.report.content import ClusterOption
    return [ClusterOption(cluster=f"cluster-{i}", chips=8, chip="c", price_term="on_demand", usd_per_chip_hour=1.0,
                          step_time_s=1.0, time_s=t * 86400.0, usd=usd, facility_kwh=1.0, tco2e=1.0, memory_fits=True,
                          pareto=False, meets_deadline=None) for i, (t, usd) in enumerate(points)]


def test_cost_labels_do_not_overlap_and_a_far_deadline_does_not_stretch_the_axis():
    from pathsim.report.figures import _renderer, cost_time_figure
    # Four candidates close together (two nearly on top of each other), and a deadline a decade beyond them.
    drawn = cost_time_figure(_options([(10.0, 5e5), (10.5, 5.1e5), (12.0, 5.05e5), (11.0, 4.9e5)]), "run", 365 * 86400.0)
    ax = drawn.figure.axes[0]
    renderer = _renderer(drawn.figure)
    labels = [t for t in ax.texts if t.get_text().startswith("cluster-")]
    assert len(labels) == 4
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert ax.get_xlim()[1] < 20  # days: the points fill the axis
    assert any(t.get_text() == "deadline 365 d →" for t in ax.texts)
    near = cost_time_figure(_options([(10.0, 5e5), (20.0, 3e5)]), "run", 30 * 86400.0).figure.axes[0]
    assert [line.get_xdata()[0] for line in near.get_lines() if line.get_linestyle() == "--"] == [30.0]
    assert near.get_xlim()[1] > 30
