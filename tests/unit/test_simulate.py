"""`worker simulate`'s stream, without Kafka: sources, drift plans, keys, ids, label delay."""

from __future__ import annotations

import csv
import gzip
import itertools
from collections import Counter
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tests.datasets import ELEC2
from worker.cli import cli
from worker.errors import ConfigError
from worker.io import codec
from worker.io.simulate import (
    GENERATORS,
    DriftPlan,
    from_file,
    messages,
    parse_points,
    synthetic,
    variants_of,
)


def test_every_generator_yields_string_named_json_features_and_labels() -> None:
    for name in GENERATORS:
        rows = list(synthetic(name, DriftPlan(concepts=(0, 1), points=(5,)), seed=3, limit=10))
        assert len(rows) == 10
        for features, label, _concept in rows:
            assert features and all(isinstance(k, str) for k in features)
            assert all(isinstance(v, int | float | str | bool) for v in features.values())
            assert label is not None
        # binary generators give booleans, as in ARCHITECTURE §2
        assert all(isinstance(label, bool) for _x, label, _k in rows), name


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    plan = DriftPlan(concepts=(0, 2), points=(50,))
    a = list(synthetic("agrawal", plan, seed=1, limit=100))
    assert a == list(synthetic("agrawal", plan, seed=1, limit=100))
    assert a != list(synthetic("agrawal", plan, seed=2, limit=100))


def test_abrupt_drift_switches_the_concept_at_each_point() -> None:
    plan = DriftPlan(concepts=(0, 2, 1), points=(100, 250))
    concepts = [k for _x, _y, k in synthetic("sea", plan, seed=0, limit=400)]
    assert concepts == [0] * 100 + [1] * 150 + [2] * 150
    assert [plan.variant(k) for k in (0, 1, 2, 3)] == [0, 2, 1, 0]  # cycled


def test_abrupt_drift_changes_the_labelling_function() -> None:
    # SEA variant 0: y = x0 + x1 > 8; variant 2: y = x0 + x1 > 7 — points in between change class
    plan = DriftPlan(concepts=(0, 2), points=(2000,))
    rows = list(synthetic("sea", plan, seed=5, limit=4000))

    def agrees_with(threshold: float, part: list) -> float:
        return sum((x["x0"] + x["x1"] > threshold) == y for x, y, _k in part) / len(part)

    before, after = rows[:2000], rows[2000:]
    assert agrees_with(8, before) == 1.0 and agrees_with(7, after) == 1.0
    assert agrees_with(8, after) < 0.95


def test_gradual_drift_mixes_the_concepts_around_the_point() -> None:
    plan = DriftPlan(concepts=(0, 1), points=(1000,), width=400)
    concepts = [k for _x, _y, k in synthetic("sea", plan, seed=9, limit=2000)]
    early, middle, late = concepts[:600], concepts[900:1100], concepts[1400:]
    assert sum(early) / len(early) < 0.05
    assert 0.25 < sum(middle) / len(middle) < 0.75
    assert sum(late) / len(late) > 0.95


def test_drift_every_for_endless_streams() -> None:
    plan = DriftPlan(concepts=(0, 1), points=(10,), every=20)
    assert [plan.concept(i) for i in (9, 10, 29, 30, 50)] == [0, 1, 1, 2, 3]
    assert plan.variant(plan.concept(50)) == 1


def test_parse_points_and_bad_plans() -> None:
    assert parse_points(["50%", "0.25", "7"], 1000) == (7, 250, 500)
    with pytest.raises(ConfigError, match="needs --events"):
        parse_points(["0.5"], 0)
    with pytest.raises(ConfigError, match="event index or a share"):
        parse_points(["half"], 100)
    with pytest.raises(ConfigError, match="increasing"):
        DriftPlan(points=(5, 3))
    with pytest.raises(ConfigError, match="variants 0..3"):
        next(synthetic("sea", DriftPlan(concepts=(0, 4)), seed=1))
    with pytest.raises(ConfigError, match="unknown generator"):
        variants_of("nope")


def test_inline_labels_ids_keys_and_event_format() -> None:
    stream = synthetic("agrawal", DriftPlan(), seed=1)
    out = list(messages(stream, events=500, entities=7, labels="inline", id_prefix="run1-", seed=4,
                        clock=lambda: 1764160000.5))
    assert [m.kind for m in out] == ["event"] * 500
    assert [m.value["id"] for m in out] == [f"run1-{i}" for i in range(500)]
    keys = Counter(m.key for m in out)
    assert set(keys) == {f"user-{k}" for k in range(7)}  # every entity, each many times
    for m in out:
        assert set(m.value) == {"id", "ts", "features", "label"} and m.value["ts"] == 1764160000.5
        # what the worker's own decoder accepts, with the entity as the message key
        event = codec.decode_event(orjson.dumps(m.value), m.key.encode(), ("events", 0, 0))
        assert event.label == m.value["label"] and event.key == m.key


def test_delayed_labels_come_after_exactly_delay_more_events() -> None:
    delay, n = 25, 300
    out = list(messages(synthetic("sea", DriftPlan(), seed=2), events=n, entities=0, labels="topic",
                        label_delay=delay, id_prefix="e"))
    events = [m for m in out if m.kind == "event"]
    labels = [m for m in out if m.kind == "label"]
    assert len(events) == len(labels) == n
    assert all("label" not in m.value and m.key is None for m in events)
    assert [m.value["id"] for m in labels] == [m.value["id"] for m in events]  # same order
    position = {id(m): i for i, m in enumerate(out)}
    for i, label in enumerate(labels):
        events_before = sum(1 for m in out[:position[id(label)]] if m.kind == "event")
        # the label of event i follows event i + delay (the last ones follow the last event)
        assert events_before == min(i + delay + 1, n)
        assert set(label.value) == {"id", "label", "ts"}
        codec.decode_label(orjson.dumps(label.value), ("labels", 0, 0))


def test_labels_none_and_zero_delay() -> None:
    out = list(messages(synthetic("sea", DriftPlan(), seed=2), events=5, labels="none"))
    assert all(m.kind == "event" and "label" not in m.value for m in out)
    out = list(messages(synthetic("sea", DriftPlan(), seed=2), events=3, labels="topic", id_prefix="z"))
    assert [(m.kind, m.value["id"]) for m in out] == [("event", "z0"), ("label", "z0"), ("event", "z1"),
                                                      ("label", "z1"), ("event", "z2"), ("label", "z2")]


def test_events_zero_is_endless() -> None:
    stream = messages(synthetic("sine", DriftPlan(every=100), seed=1), events=0, labels="inline")
    assert len(list(itertools.islice(stream, 5000))) == 5000


def test_csv_source(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b,class,ignored\n1.5,x,UP,9\n2.5,y,DOWN,9\n,z,UP,9\n")
    rows = list(from_file(data, target="class", positive="UP", drop=["ignored"]))
    assert rows == [({"a": 1.5, "b": "x"}, True, None), ({"a": 2.5, "b": "y"}, False, None),
                    ({"b": "z"}, True, None)]
    out = list(messages(iter(rows), id_prefix="c", entities=0))
    assert [m.value["id"] for m in out] == ["c0", "c1", "c2"]
    packed = tmp_path / "data.csv.gz"  # a CSV by its name under the compression suffix: no ids either
    packed.write_bytes(gzip.compress(data.read_bytes()))
    assert list(from_file(packed, target="class", positive="UP", drop=["ignored"])) == rows
    with_ids = tmp_path / "ids.csv"
    with_ids.write_text("id,a,class\nrow-7,1,true\n")
    rows = list(from_file(with_ids, target="class", id_column="id"))
    assert [m.value["id"] for m in messages(iter(rows))] == ["row-7"]


def test_elec2_csv_labels_follow_positive() -> None:
    rows = list(itertools.islice(from_file(ELEC2, target="class", positive="UP"), 100))
    with ELEC2.open(newline="") as f:
        expected = [row["class"] == "UP" for row in itertools.islice(csv.DictReader(f), 100)]
    assert [label for _x, label, _id in rows] == expected
    assert set(expected) == {True, False}


def test_cli_refuses_bad_options_before_touching_kafka() -> None:
    runner = CliRunner()
    bad = ["simulate", "--bootstrap", "127.0.0.1:1", "--concepts", "a,b"]
    result = runner.invoke(cli, bad)
    assert result.exit_code == 2 and "--concepts" in result.output
    result = runner.invoke(cli, ["simulate", "--bootstrap", "127.0.0.1:1", "--generator", "nope"])
    assert result.exit_code == 2
    assert "simulate" in runner.invoke(cli, ["--help"]).output
