"""`worker report`: from a real replay folder and from a control log, to HTML and PNG,
and the page in headless Chromium (Debian's `chromium`; skipped when it is missing —
scripts/test installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import Command, Event
from worker.io.codec import encode_command, encode_lifecycle
from worker.io.files import read_records
from worker.io.simulate import DriftPlan, messages, synthetic
from worker.obs.chart_png import render_png
from worker.obs.charts import Frame, chart
from worker.obs.png import Canvas, read_png
from worker.obs.report_control import load_control
from worker.obs.report_data import ReportData
from worker.obs.report_html import render_html, write_report
from worker.obs.report_lifecycle import MARKER_TYPES
from worker.obs.report_replay import load_replay

N = 12_000
CHROMIUM = Path("/usr/bin/chromium")
BLUE, ORANGE, GREEN = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)


def drifting_stream(path: Path, n: int = N) -> Path:
    """SEA with an abrupt drift (threshold 8 → 7) at half the stream, delayed labels."""
    with path.open("wb") as f:
        for m in messages(synthetic("sea", DriftPlan(concepts=(0, 2), points=(n // 2,)), seed=11), events=n,
                          labels="topic", label_delay=20, id_prefix="e", entities=0):
            f.write(orjson.dumps(m.value) + b"\n")
    return path


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `worker replay --out` folder (the command line, as a user runs it)."""
    base = tmp_path_factory.mktemp("replay")
    stream = drifting_stream(base / "sea.jsonl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    out = subprocess.run([sys.executable, "-m", "worker", "replay", str(stream), "--out", str(base / "out"),
                          "--timeline-every", "200", "--warmup-labels", "300"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    return base / "out"


def embedded_data(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match, "no embedded data"
    return json.loads(match.group(1))


# ----------------------------------------------------------------------------- replay folder


def test_report_of_a_replay_folder(replay_dir: Path, tmp_path: Path) -> None:
    summary = json.loads((replay_dir / "summary.json").read_text())
    lifecycle = [json.loads(line) for line in (replay_dir / "lifecycle.jsonl").read_text().splitlines()]
    timeline = (replay_dir / "timeline.jsonl").read_text().splitlines()
    assert summary["promotions"] >= 1, "the drift should lead to a promotion"

    out = tmp_path / "r" / "report.html"
    result = subprocess.run([sys.executable, "-m", "worker", "report", str(replay_dir), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"html: {out}" in result.stdout and (tmp_path / "r" / "report.png").is_file()
    page = out.read_text()
    data = embedded_data(page)

    # the data: every timeline point, with both models' window and fading metrics
    assert len(data["points"]) == len(timeline)
    last = json.loads(timeline[-1])
    assert data["points"][-1]["champion"]["window"]["accuracy"] == last["champion"]["window"]["accuracy"]
    assert data["points"][-1]["challenger"]["fading"]["f1"] == last["challenger"]["fading"]["f1"]
    assert data["summary"]["promotions"] == summary["promotions"]
    assert data["summary"]["events"] == N
    assert f'<b>{summary["bad"]}</b><span>bad inputs</span>' in page  # shown, not only in the data

    # markers: one per drift alarm, promotion, rollback and reset, at their labelled count
    marked = [(m["type"], m["labelled"]) for m in data["markers"]]
    expected = [(e["type"], e["labelled"]) for e in lifecycle if e["type"] in MARKER_TYPES]
    assert marked == expected and ("promoted" in dict(marked))
    for kind, _at in marked:
        assert f'class="marker {kind}"' in page
    promoted = next(e for e in lifecycle if e["type"] == "promoted")
    arrow = f"v{promoted['detail']['from_version']}→v{promoted['detail']['to_version']}"
    assert page.count(arrow) >= 2  # in both charts (and the lifecycle table)

    # the version table: every version, with its lineage
    assert [v["version"] for v in data["versions"]] == sorted(int(v) for v in summary["models"])
    for row in data["versions"]:
        model = summary["models"][str(row["version"])]
        assert row["parent"] == model["parent"] and row["spec"] == model["spec"]
        assert f"<td class=\"num\">v{row['version']}</td>" in page
    roles = {v["version"]: v["role"] for v in data["versions"]}
    assert roles[summary["champion"]] == "champion" and roles[1] == "former champion"

    # two charts, both views of both roles, and nothing fetched from anywhere
    assert page.count("<svg") == 2 and page.count('class="series"') >= 8
    for name in ("champion (window)", "champion (fading)", "challenger (window)", "challenger (fading)"):
        assert name in page
    assert not re.search(r"""\b(src|href)\s*=|url\(|@import|https?://(?!www\.w3\.org/2000/svg)""", page)


def test_png_of_the_main_chart(replay_dir: Path, tmp_path: Path) -> None:
    png = write_report(load_replay(replay_dir), tmp_path / "report.html")
    width, height, rows = read_png(png.read_bytes())
    assert (width, height) == (1200, 600)
    colours = {}
    for row in rows[90:560]:  # the plot area
        for pixel in row:
            colours[pixel] = colours.get(pixel, 0) + 1
    assert sum(n for c, n in colours.items() if c != (255, 255, 255)) > 5000
    assert colours.get(BLUE, 0) > 500 and colours.get(ORANGE, 0) > 500  # champion, challenger
    assert colours.get(GREEN, 0) > 100  # a promotion marker


def test_text_past_the_right_edge_is_clipped_not_wrapped_to_the_next_row() -> None:
    canvas = Canvas(40, 20)
    canvas.text(36, 5, "wide text", (0, 0, 0))
    _w, _h, rows = read_png(canvas.png())
    assert all(pixel == (255, 255, 255) for row in rows for pixel in row[:30])


def test_marker_labels_stay_inside_the_chart() -> None:
    data = ReportData(source="test", points=[{"labelled": 0, "champion": None, "challenger": None},
                                                    {"labelled": 1000, "champion": None, "challenger": None}],
                             markers=[{"labelled": 995, "type": "promoted", "text": "v8→v9 a long label",
                                       "title": "t"}])
    frame = Frame(chart(data, "accuracy"), 1200, 600, top=106)
    assert frame.marker_rows(6) == [None], "no room left of the edge: tooltip only"


def test_a_model_without_labels_yet_is_a_gap_not_a_zero(replay_dir: Path) -> None:
    data = load_replay(replay_dir)
    values = [p["challenger"]["window"]["accuracy"] for p in data.points if p["challenger"]]
    assert all(v is None or v > 0.5 for v in values)


def test_no_replay_folder() -> None:
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="not a `worker replay --out` folder"):
        load_replay(Path(__file__).parent)


# ----------------------------------------------------------------------------- control log


def control_log(n: int = N, status_every: int = 500) -> tuple[list[dict], Engine]:
    """What a worker writes on the control topic for a drifting stream, with an
    operator's `status` every ``status_every`` events (and their commands on the log)."""
    engine = Engine(EngineConfig(warmup_labels=300))
    log: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        records = list(read_records(drifting_stream(Path(folder) / "sea.jsonl", n)))
    for i, record in enumerate(records):
        if isinstance(record, Event):
            engine.process(record)
        else:
            engine.process_label(record)
        if i % status_every == status_every - 1:
            command = Command(type="status", command_id=f"s{i}", issued_by="test")
            log.append(orjson.loads(encode_command(command, None)))
            engine.apply(command)
        for decision in engine.take_decisions():
            log.append(orjson.loads(encode_command(decision, b"k")))
        log.extend(orjson.loads(encode_lifecycle(e)) for e in engine.take_lifecycle())
    return log, engine


def test_report_from_a_control_log(tmp_path: Path) -> None:
    log, engine = control_log()
    data = load_control(log, source="test")
    reports = [m for m in log if m["type"] == "status_report"]
    assert len(data.points) == len(reports) > 10
    assert data.points[-1]["labelled"] == engine.counts["labelled"]
    assert data.points[-1]["champion"]["version"] == engine.champion
    assert data.summary["promotions"] == engine.counts["promotions"] >= 1
    assert data.summary["champion"] == engine.champion and data.summary["challenger"] == engine.challenger
    kinds = {m["type"] for m in data.markers}
    assert "promoted" in kinds and "drift_detected" in kinds
    ended = [m for m in log if m["type"] == "probation_ended"]  # in the table, naming the former champion
    assert ended and [e["text"] for e in data.events if e["type"] == "probation_ended"] == [
        f"v{m['detail']['previous']} off probation" for m in ended]
    versions = {v["version"]: v for v in data.versions}
    assert set(versions) == {mv.version for mv in engine.registry}
    for mv in engine.registry:
        assert versions[mv.version]["parent"] == mv.parent, mv.version
    assert versions[engine.champion]["role"] == "champion"
    page = render_html(data)
    assert embedded_data(page)["summary"]["promotions"] == engine.counts["promotions"]
    assert 'class="marker promoted"' in page and not data.notes


def test_after_a_fresh_start_the_report_shows_the_new_engine_only() -> None:
    old_log, old = control_log(n=4000)
    new_log, new = control_log(n=2500)
    fresh = Engine(EngineConfig())  # what a worker writes as it starts: a status report
    fresh.report_status()
    start = [orjson.loads(encode_lifecycle(e)) for e in fresh.take_lifecycle()]
    data = load_control(old_log + start + new_log)
    assert old.counts["promotions"] != new.counts["promotions"] or old.champion != new.champion
    assert data.summary["promotions"] == sum(m["type"] == "promoted" for m in data.markers) \
        == new.counts["promotions"]
    assert {v["version"] for v in data.versions} == {mv.version for mv in new.registry}
    assert [p["labelled"] for p in data.points] == sorted(p["labelled"] for p in data.points)
    assert any("earlier engine" in note for note in data.notes)
    assert not any("earlier engine" in note for note in load_control(start + new_log).notes)
    # a restart before any event is no new engine: what was applied meanwhile stays
    fresh.apply(Command(type="pause_learning", command_id="p"))
    fresh.report_status()
    idle = start + [orjson.loads(encode_lifecycle(e)) for e in fresh.take_lifecycle()]
    assert [e["text"] for e in load_control(idle).events] == ["learning paused"]


def test_the_a_b_comparison_of_a_traffic_split() -> None:
    log, engine = control_log(n=3000)
    assert "A/B" not in render_html(load_control(log)), "no split, no A/B section"
    engine.apply(Command(type="set_split", command_id="split", percent=40.0))
    for i in range(400):
        engine.process(Event(id=f"ab{i}", features={"x": i % 7 / 7, "y": i % 5 / 5}, label=i % 3 == 0,
                             key=f"user-{i}"))
    engine.apply(Command(type="status", command_id="last"))
    engine.apply(Command(type="set_split", command_id="later", percent=25.0))  # after the last status
    log += [orjson.loads(encode_lifecycle(e)) for e in engine.take_lifecycle()]
    data = load_control(log)
    arms = engine.status()["arms"]
    assert data.split == 25.0 and data.arms == arms
    assert [e["text"] for e in data.events if e["type"] == "command_applied"] == [
        "split set to 40.0 %", "split set to 25.0 %"], "settings changed by a command are in the table"
    page = render_html(data)
    assert "<h2>A/B: served traffic per arm</h2>" in page and "25.0 % of entities" in page
    for arm in ("champion", "challenger"):
        n, accuracy = arms[arm]["cumulative"]["n"], arms[arm]["cumulative"]["accuracy"]
        assert n > 0 and f'<td>{arm}</td><td>cumulative</td><td class="num">{n}</td>' \
            f'<td class="num">{accuracy:.4f}</td>' in page


def test_an_a_b_section_with_missing_values_still_renders() -> None:
    status = {"type": "status_report", "detail": {"champion": 2, "challenger": 3, "arms": {
        "champion": None, "challenger": {"cumulative": {"n": 5, "accuracy": 0.8}}}}, "labelled": 9}
    page = render_html(load_control([status]))
    assert "<td>champion</td><td>cumulative</td><td class=\"num\">–</td>" in page
    assert "Traffic split now: – %" in page, "a release that wrote no split"


def test_a_version_never_scored_has_no_metrics_in_the_versions_table_not_zeros() -> None:
    """A status report taken when a challenger had just been created names it with n = 0."""
    engine = Engine(EngineConfig(warmup_labels=20))
    for i in range(20):
        engine.process(Event(id=f"e{i}", features={"x": i / 20}, label=i % 2 == 0))
    engine.apply(Command(type="status", command_id="now"))
    log = [orjson.loads(encode_lifecycle(e)) for e in engine.take_lifecycle()]
    data = load_control(log)
    fresh = next(v for v in data.versions if v["version"] == engine.challenger)
    assert (fresh["labelled"], fresh.get("accuracy"), fresh.get("f1")) == (0, None, None)
    page = render_html(data)
    row = next(r for r in page.splitlines() if r.startswith('<tr class="role-challenger">'))
    assert row.endswith('<td class="num">0</td><td class="num">–</td><td class="num">–</td></tr>'), row
    assert "F1 of a version as of the last status report" in page


def test_control_log_without_status_reports_still_has_markers_and_a_note() -> None:
    log, engine = control_log(n=6000, status_every=10**9)
    data = load_control(log)
    assert data.points == [] and data.markers and data.notes
    assert data.summary["promotions"] == engine.counts["promotions"]
    render_png(chart(data, "accuracy"))  # an empty chart still renders
    assert "No status_report" in render_html(data)


# ----------------------------------------------------------------------------- in a browser


def test_page_in_headless_chromium(replay_dir: Path, tmp_path: Path) -> None:
    assert CHROMIUM.exists(), "no /usr/bin/chromium: scripts/test installs it (apt-get install chromium)"
    page = tmp_path / "report.html"
    write_report(load_replay(replay_dir), page)
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
         "--window-size=1200,900", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # any console message of the page (errors, uncaught exceptions) is a failure: it has no script
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    width, height, rows = read_png(shot.read_bytes())
    assert (width, height) == (1200, 900)
    chart = [pixel for row in rows[300:700] for pixel in row[60:1150]]  # the accuracy chart
    assert sum(1 for p in chart if p != (255, 255, 255)) > 20_000
    near = {"blue": BLUE, "orange": ORANGE}
    for name, colour in near.items():
        close = sum(1 for p in chart if sum(abs(a - b) for a, b in zip(p, colour, strict=True)) < 40)
        assert close > 300, f"too few {name} pixels in the chart"


def test_chromium_path_is_what_scripts_test_installs() -> None:
    script = (Path(__file__).resolve().parents[2] / "scripts" / "test").read_text()
    assert "chromium" in script and str(CHROMIUM) in script
    assert shutil.which("bash")


def test_cli_needs_a_source() -> None:
    from click.testing import CliRunner

    from worker.cli import cli

    result = CliRunner().invoke(cli, ["report"], env={"WORKER_BOOTSTRAP": ""})
    assert result.exit_code == 2 and "--bootstrap" in result.output


def test_the_report_loads_no_kafka_client_until_it_reads_the_topic() -> None:
    """`worker report RUN_DIR` and the data, chart and page modules need no librdkafka."""
    code = "import sys, worker.obs.report; assert 'confluent_kafka' not in sys.modules, 'kafka imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
