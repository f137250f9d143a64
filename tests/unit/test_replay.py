"""`worker replay` end to end: the command line (a subprocess) and the Python API.

Small files written by the tests: a CSV (label, id and ignored columns) and a JSONL
stream with inline labels, delayed labels and bad lines, with one abrupt concept drift
so that the automatic policy has something to promote.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from worker.cli import cli
from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import LIFECYCLE_TYPES
from worker.errors import ConfigError
from worker.io.files import BadRecord, read_records
from worker.runtime.replay import BAD_EXAMPLES, replay

N_EVENTS = 1200  # good events in the JSONL stream
DRIFT_AT = 500  # the concept flips here
DELAY = 7  # events between an unlabelled event and its label line
BAD_LINES = ["this is {not JSON", '{"features": {"x": 1.0}, "label": true}',
             '{"id": "bad-nan", "features": {"x": NaN, "z": 1.0}, "label": true}']
WARMUP = 100
TIMELINE_EVERY = 100

SUMMARY_KEYS = {"events", "labelled", "bad", "promotions", "rollbacks", "champion", "challenger",
                "served", "models"}


# ----------------------------------------------------------------------------- helpers


def run_cli(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    args = (*args, "--timeline-every", TIMELINE_EVERY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}  # flags only
    return subprocess.run([sys.executable, "-m", "worker", "replay", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_outputs(out: Path, *, events: int, labelled: int, bad: int) -> dict[str, Any]:
    """The three output files are there and consistent; returns the summary."""
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert (summary["events"], summary["labelled"], summary["bad"]) == (events, labelled, bad)
    assert {"accuracy", "f1"} <= set(summary["served"])
    assert 0.0 <= summary["served"]["accuracy"] <= 1.0
    assert {"spec", "accuracy", "f1", "labelled"} <= set(summary["models"]["1"])
    assert summary["models"]["1"]["spec"] == EngineConfig().champion
    assert str(summary["champion"]) in summary["models"]
    assert str(summary["challenger"]) in summary["models"]

    lifecycle = read_jsonl(out / "lifecycle.jsonl")
    assert lifecycle, "at least the first challenger's creation"
    assert {e["type"] for e in lifecycle} <= LIFECYCLE_TYPES
    first = lifecycle[0]
    assert (first["type"], first["labelled"], first["champion"]) == ("challenger_created", WARMUP, 1)
    assert sum(e["type"] == "promoted" for e in lifecycle) == summary["promotions"]
    assert sum(e["type"] == "rolled_back" for e in lifecycle) == summary["rollbacks"]

    timeline = read_jsonl(out / "timeline.jsonl")
    assert len(timeline) >= 2
    labelled_seen = [p["labelled"] for p in timeline]
    assert labelled_seen == sorted(labelled_seen)
    for point in timeline:
        for role in ("champion", "challenger"):
            if role in point:
                assert {"version", "cumulative", "window", "fading"} <= set(point[role])
                assert {"accuracy", "f1"} <= set(point[role]["cumulative"])
    last = timeline[-1]
    assert (last["events"], last["labelled"]) == (events, labelled)
    assert last["champion"]["version"] == summary["champion"]
    assert last["challenger"]["version"] == summary["challenger"]
    return summary


# ----------------------------------------------------------------------------- input files


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_EVENTS events, one concept drift; every 10th event's label comes DELAY events
    later on its own line; the bad lines are spread over the file."""
    rng = random.Random(7)
    lines: list[str] = []
    due: dict[int, list[str]] = {}
    for i in range(N_EVENTS):
        x, z = rng.uniform(-1, 1), rng.uniform(-1, 1)
        y = (x + 0.2 * z > 0) if i < DRIFT_AT else (x + 0.2 * z < 0)
        event: dict[str, Any] = {"id": f"e{i}", "features": {"x": x, "z": z, "gone": None}}
        if i % 10 == 3 and i + DELAY < N_EVENTS:
            due.setdefault(i + DELAY, []).append(json.dumps({"id": f"e{i}", "label": y}))
        else:
            event["label"] = y
        lines.append(json.dumps(event))
        lines.extend(due.pop(i, []))
        if i in (50, 600, 1100):
            lines.append(BAD_LINES[(50, 600, 1100).index(i)])
    assert not due
    path = tmp_path_factory.mktemp("jsonl") / "events.jsonl"
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line is not an error
    return path


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(11)
    rows = ["when,a,b,key,outcome"]
    for i in range(400):
        a, b = rng.uniform(0, 10), rng.uniform(-5, 5)
        rows.append(f"2026-01-{i % 28 + 1:02d} note,{a:.4f},{b:.4f},row-{i},{'yes' if a + b > 5 else 'no'}")
    path = tmp_path_factory.mktemp("csv") / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def auto_run(jsonl_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("auto") / "out"
    return out, run_cli(jsonl_file, "--warmup-labels", WARMUP, "--out", out)


# ----------------------------------------------------------------------------- the command line


def test_csv_replay_with_target_positive_id_and_dropped_columns(csv_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(csv_file, "--target", "outcome", "--positive", "yes", "--id-column", "key",
                   "--drop-column", "when", "--warmup-labels", WARMUP, "--out", out)
    assert done.returncode == 0, done.stderr
    # The dropped column is a string: had it been a feature, StandardScaler would raise
    # on every event and they would all be bad.
    summary = check_outputs(out, events=400, labelled=400, bad=0)
    # --positive: boolean labels, so F1 is the binary F1 of a learnable concept.
    assert summary["served"]["accuracy"] > 0.8
    assert summary["served"]["f1"] > 0.7
    assert '"events": 400' in done.stdout


def test_jsonl_replay_counts_bad_lines_and_joins_delayed_labels(auto_run: tuple[Path, Any]) -> None:
    out, done = auto_run
    assert done.returncode == 0, done.stderr
    summary = check_outputs(out, events=N_EVENTS, labelled=N_EVENTS, bad=len(BAD_LINES))
    reasons = [b["reason"] for b in summary["bad_examples"]]
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "missing id"
    assert "not finite" in reasons[2]
    assert summary["pending"]["predictions"] == 0  # every delayed label found its event
    assert summary["promotions"] >= 1, "the drift should make the challenger win"
    lifecycle = read_jsonl(out / "lifecycle.jsonl")
    first = next(i for i, e in enumerate(lifecycle) if e["type"] == "promoted")
    promoted = lifecycle[first]["detail"]
    assert promoted["from_version"] == 1
    assert promoted["to_version"] == lifecycle[first]["champion"]
    created = [e["detail"]["version"] for e in lifecycle[:first] if e["type"] == "challenger_created"]
    assert promoted["to_version"] in created
    assert lifecycle[first]["labelled"] > DRIFT_AT


def test_manual_policy_never_promotes(jsonl_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(jsonl_file, "--warmup-labels", WARMUP, "--policy", "manual", "--out", out)
    assert done.returncode == 0, done.stderr
    summary = check_outputs(out, events=N_EVENTS, labelled=N_EVENTS, bad=len(BAD_LINES))
    assert (summary["promotions"], summary["rollbacks"]) == (0, 0)
    assert (summary["champion"], summary["challenger"]) == (1, 2)


def test_config_file_engine_table_is_honoured(jsonl_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[engine]\nwarmup_labels = 100\npolicy = "manual"\nwindow = 50\n'
                      "[engine.promotion]\nalpha = 0.01\n")
    out = tmp_path / "out"
    done = run_cli(jsonl_file, "--config", config, "--out", out)
    assert done.returncode == 0, done.stderr
    summary = check_outputs(out, events=N_EVENTS, labelled=N_EVENTS, bad=len(BAD_LINES))
    assert summary["promotions"] == 0  # policy = "manual" from the file


def test_flags_win_over_the_config_file(jsonl_file: Path, tmp_path: Path, auto_run) -> None:
    """In-process through click (no interpreter start-up): same command, same outputs."""
    config = tmp_path / "worker.toml"
    config.write_text('[engine]\nwarmup_labels = 100\npolicy = "manual"\n')
    out = tmp_path / "out"
    args = [jsonl_file, "--config", config, "--policy", "auto", "--out", out,
            "--timeline-every", TIMELINE_EVERY]
    no_env = {k: None for k in os.environ if k.startswith("WORKER_")}
    done = CliRunner().invoke(cli, ["replay", *map(str, args)], env=no_env)
    assert done.exit_code == 0, done.output
    summary = check_outputs(out, events=N_EVENTS, labelled=N_EVENTS, bad=len(BAD_LINES))
    assert summary == json.loads((auto_run[0] / "summary.json").read_text())


def test_unknown_config_key_is_one_clear_line_and_exit_2(jsonl_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text("[engine]\nwarmup_lables = 100\n")
    done = run_cli(jsonl_file, "--config", config, "--out", tmp_path / "out")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "unknown key 'warmup_lables' in [engine]" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("toml", "where"), [
    ("engine = 5", "[engine]"), ("[engine]\npromotion = 5", "[engine.promotion]"),
    ('run = "x"', "[run]"), ("[run]\nkafka = 3", "[run.kafka]"),
])
def test_a_setting_where_a_table_belongs_is_one_clear_line_and_exit_2(
        jsonl_file: Path, tmp_path: Path, toml: str, where: str) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(toml + "\n")
    done = run_cli(jsonl_file, "--config", config, "--out", tmp_path / "out")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{where} " in lines[0] and "must be a table of settings" in lines[0], lines[0]


@pytest.mark.parametrize("spec", ["linear_model.NoSuchModel", "__import__('os').system('true')"])
def test_bad_champion_spec_is_one_clear_line_and_exit_2(jsonl_file: Path, tmp_path: Path, spec: str) -> None:
    done = run_cli(jsonl_file, "--champion", spec, "--out", tmp_path / "out")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "invalid model spec" in lines[0]
    assert "Traceback" not in done.stderr


def test_labels_the_model_cannot_learn_are_counted_and_warned_about(tmp_path: Path) -> None:
    """A CSV replayed without --positive: string labels, which a binary classifier cannot
    learn. Not fatal, but never silent (it would read as a model that never learns)."""
    rows = [f"{i % 5},{'UP' if i % 5 > 2 else 'DOWN'}" for i in range(60)]
    data = tmp_path / "updown.csv"
    data.write_text("x,class\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    no_env = {k: None for k in os.environ if k.startswith("WORKER_")}
    done = CliRunner().invoke(cli, ["replay", str(data), "--target", "class", "--out", str(out)], env=no_env)
    assert done.exit_code == 0, done.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labelled"] == 60 and summary["learn_errors"] == 60  # v1 learns alone: warm-up
    assert summary["learn_error"].startswith("v1 could not learn: ValueError")
    assert "warning: 60 times a model could not learn" in done.stderr and "--positive" in done.stderr

    done = CliRunner().invoke(cli, ["replay", str(data), "--target", "class", "--positive", "UP",
                                    "--out", str(out)], env=no_env)
    assert done.exit_code == 0 and "warning" not in done.stderr
    assert json.loads((out / "summary.json").read_text())["learn_errors"] == 0


# ----------------------------------------------------------------------------- the Python API


def test_python_api_gives_the_same_summary_as_the_cli(jsonl_file: Path, tmp_path: Path, auto_run) -> None:
    engine = Engine(EngineConfig(warmup_labels=WARMUP))
    result = replay(read_records(jsonl_file), engine, tmp_path / "api", timeline_every=TIMELINE_EVERY)
    cli_summary = json.loads((auto_run[0] / "summary.json").read_text())
    assert json.loads(json.dumps(result, default=str)) == cli_summary
    for name in ("lifecycle.jsonl", "timeline.jsonl"):
        assert (tmp_path / "api" / name).read_text() == (auto_run[0] / name).read_text()
    assert engine.counts["events"] == N_EVENTS


def test_python_api_reads_csv_columns(csv_file: Path) -> None:
    records = list(read_records(csv_file, target="outcome", id_column="key", drop=["when"], positive="yes"))
    assert len(records) == 400
    first = records[0]
    assert first.id == "row-0"
    assert set(first.features) == {"a", "b"}
    assert type(first.label) is bool
    assert first.label == (first.features["a"] + first.features["b"] > 5)


def test_python_api_without_output_folder_and_many_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "many-bad.jsonl"
    good = [json.dumps({"id": f"e{i}", "features": {"x": float(i % 5)}, "label": i % 2 == 0})
            for i in range(60)]
    path.write_text("\n".join(line for g in good for line in (g, "{oops")) + "\n")
    assert sum(isinstance(r, BadRecord) for r in read_records(path)) == 60
    result = replay(read_records(path), Engine(EngineConfig(warmup_labels=10)), None)
    assert (result["events"], result["bad"]) == (60, 60)
    assert len(result["bad_examples"]) == BAD_EXAMPLES  # counted, only the first few kept
    assert [b["line"] for b in result["bad_examples"][:2]] == [2, 4]


def test_csv_edge_cases_keep_every_value_where_it_belongs(tmp_path: Path) -> None:
    """A byte-order mark, a quoted cell over two lines, an empty label cell, a short row."""
    path = tmp_path / "edge.csv"
    path.write_bytes(b'\xef\xbb\xbfdate,x,class\r\n1,2,UP\r\n2,3,\r\n3,"a\nb",DOWN\r\n4,5\r\n\r\n5,6,UP\r\n')
    warnings: list[str] = []
    records = list(read_records(path, target="class", id_column="date", positive="UP", warnings=warnings))
    events = [r for r in records if not isinstance(r, BadRecord)]
    assert [(e.id, e.label) for e in events] == [("1", True), ("2", None), ("3", False), ("5", True)]
    assert events[2].features == {"x": "a\nb"}
    assert [(r.line, r.reason) for r in records if isinstance(r, BadRecord)] == [
        (6, "row has 2 cells, the header 3")]  # its physical line, after the two-line cell
    assert warnings == []


def test_a_csv_column_named_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("a,a,label\n1,100,true\n")
    with pytest.raises(ConfigError, match="column 'a' appears more than once"):
        list(read_records(path, target="label"))


def test_a_positive_value_that_never_appears_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "case.csv"
    path.write_text("x,class\n1,UP\n2,DOWN\n")
    no_env = {k: None for k in os.environ if k.startswith("WORKER_")}
    done = CliRunner().invoke(cli, ["replay", str(path), "--target", "class", "--positive", "up",
                                    "--out", str(tmp_path / "out")], env=no_env)
    assert done.exit_code == 0, done.output
    assert "warning: --positive 'up' never appears in column 'class' (values: 'DOWN', 'UP')" in done.stderr


def test_simulate_from_a_file_says_which_rows_it_skipped(tmp_path: Path) -> None:
    from worker.io.simulate import from_file

    path = tmp_path / "ragged.csv"
    path.write_text("x,class\n1,UP\n2\n3,DOWN\n")
    notes: list[str] = []
    rows = list(from_file(path, target="class", positive="UP", notes=notes))
    assert [label for _, label, _ in rows] == [True, False]
    assert notes == ["1 bad rows of ragged.csv skipped, the first at line 3: row has 1 cells, the header 2"]


def test_csv_options_on_a_jsonl_file_are_refused_and_non_finite_cells_are_bad(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "e1", "features": {"x": 1.0}, "label": true}\n')
    with pytest.raises(ConfigError, match="are for CSV files; events.jsonl is read as JSONL"):
        read_records(events, target="label")
    path = tmp_path / "nan.csv"
    path.write_text("x,class\n1,UP\nnan,UP\n-inf,DOWN\n1e300,UP\n" + "y" * 4097 + ",UP\n")
    records = list(read_records(path, target="class", positive="UP"))
    assert [r.reason for r in records if isinstance(r, BadRecord)] == [
        "non-finite number 'nan'", "non-finite number '-inf'",
        "number '1e300' is larger than 1e+100 in magnitude", "string cell longer than 4096 characters"]
    wide = tmp_path / "wide.csv"  # the limits of a JSON event hold for a CSV row too
    wide.write_text(",".join([f"f{i}" for i in range(1001)] + ["class"]) + "\n")
    with pytest.raises(ConfigError, match="wide.csv has 1001 feature columns, more than an event may have"):
        list(read_records(wide, target="class"))


@pytest.mark.parametrize("suffix, opener", [(".gz", "gzip"), (".bz2", "bz2"), (".xz", "lzma")])
def test_a_compressed_file_gives_the_records_of_the_plain_one(jsonl_file: Path, csv_file: Path,
                                                              tmp_path: Path, suffix: str,
                                                              opener: str) -> None:
    module = __import__(opener)
    for plain, options in ((jsonl_file, {}), (csv_file, {"target": "outcome", "positive": "yes"})):
        packed = tmp_path / (plain.name + suffix)
        with module.open(packed, "wb") as f:
            f.write(plain.read_bytes())
        assert list(read_records(packed, **options)) == list(read_records(plain, **options))


def test_a_truncated_compressed_file_is_one_clear_error(jsonl_file: Path, tmp_path: Path) -> None:
    """The command line counts the lines first (for its progress bar), so it stops before replaying."""
    import gzip

    data = gzip.compress(jsonl_file.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="cut.jsonl.gz cannot be read to its end"):
        list(read_records(cut))
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(data[:200] + bytes(b ^ 0x5A for b in data[200:400]) + data[400:])
    with pytest.raises(ConfigError, match="damaged.jsonl.gz cannot be read to its end"):
        list(read_records(damaged))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("x,class\n1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.csv is not UTF-8 text"):
        list(read_records(latin, target="class"))
    done = run_cli(cut, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("worker: configuration error: cut.jsonl.gz cannot")
