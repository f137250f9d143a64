"""The engine's memory bound and its cheap hot path: frozen metrics of dropped versions,
what per-version metrics count, the copy of a challenger, the window view's shortcut and
the one-parse JSONL reader."""

from __future__ import annotations

import copy
import pickle
import random
import re

import pytest
from river import linear_model, preprocessing, tree

from tests.datasets import elec2
from tests.unit.test_engine import LOGREG, cmd, drive, inline, two_concepts, warm_engine
from worker.core.config import EngineConfig
from worker.core.engine import Engine, copy_model
from worker.core.metrics import FrozenMetrics, Prequential, predict_from_proba
from worker.core.policy import PolicyConfig
from worker.core.types import Event, Label
from worker.errors import BadInputError
from worker.io.codec import decode_record
from worker.io.files import BadRecord, read_jsonl
from worker.runtime.replay import replay, timeline_point

AUTO = dict(warmup_labels=200, policy="auto",
            promotion=PolicyConfig(min_labels=50, max_labels=400, cooldown=20, probation=200, grace=100))


@pytest.fixture(scope="module")
def elec():
    return list(elec2())[:12_000]


def active(engine):
    return {engine.champion, engine.challenger, engine.previous} - {None}


# --- memory: dropped versions keep a frozen summary ------------------------------------


def test_dropped_versions_are_frozen_and_only_retained_ones_stay_live(elec):
    engine = Engine(EngineConfig(retain_versions=3, **AUTO))
    summary = replay(inline(elec), engine, None)
    versions = list(engine.registry)
    assert summary["promotions"] + summary["challenger_resets"] >= 10  # not vacuous
    live = [mv for mv in versions if isinstance(mv.metrics, Prequential)]
    frozen = [mv for mv in versions if isinstance(mv.metrics, FrozenMetrics)]
    assert len(live) + len(frozen) == len(versions) and frozen
    # live exactly while the model is retained: the active roles and <= 3 former champions
    assert {mv.version for mv in live} == {mv.version for mv in versions if mv.model is not None}
    assert active(engine) <= {mv.version for mv in live} and len(live) <= 3 + 3
    assert all(mv.detector is None for mv in frozen)
    # a frozen summary is small and reads like the live metrics did
    assert max(len(pickle.dumps(mv.metrics)) for mv in frozen) < 3_000
    assert len(pickle.dumps(engine.served)) > 10_000  # a live Prequential with a full window
    for mv in frozen:
        report = mv.metrics.report()
        assert set(report) == {"cumulative", "window", "fading"}
        assert report["cumulative"] == mv.metrics.cumulative() and mv.metrics.n >= report["cumulative"]["n"]
        assert summary["models"][str(mv.version)]["labelled"] == report["cumulative"]["n"]
    assert engine.status()["models"].keys() >= {"champion", "challenger"}
    timeline_point(engine)  # reads the active versions' live metrics


def test_freezing_keeps_the_values_and_the_reads():
    m = Prequential(window=5, fading=0.9)
    rng = random.Random(3)
    for _ in range(50):
        y = rng.random() < 0.5
        proba = {True: rng.random()}
        proba[False] = 1 - proba[True]
        m.update(y, predict_from_proba(proba), proba)
    frozen = m.freeze()
    assert frozen.frozen and not m.frozen and frozen.freeze() is frozen
    assert (frozen.n, frozen.n_scored, frozen.binary) == (m.n, m.n_scored, m.binary)
    assert frozen.report() == m.report()
    assert frozen.cumulative() == m.cumulative() and frozen.windowed() == m.windowed()
    assert frozen.faded() == m.faded()
    frozen.report()["cumulative"]["n"] = -1  # reads are copies
    assert frozen.cumulative()["n"] == m.n_scored
    assert not hasattr(frozen, "update")
    assert pickle.loads(pickle.dumps(frozen)).report() == m.report()


def test_a_late_label_for_a_discarded_challenger_counts_nowhere_but_served():
    engine = warm_engine(n=60, warmup=40)
    old = engine.challenger
    engine.process(Event(id="late", features={"a": 0.3, "b": 0.1}))  # scored by v1 and the challenger
    engine.apply(cmd("reset_challenger", "r1"))
    dropped = engine.registry[old]
    assert dropped.model is None and dropped.metrics.frozen
    before = dropped.metrics.report()
    champion_n, served_n = engine.registry[1].metrics.n, engine.served.n
    engine.process_label(Label(id="late", label=True))
    assert dropped.metrics.report() == before
    assert engine.registry[1].metrics.n == champion_n + 1 and engine.served.n == served_n + 1
    assert engine.status()["test"]["n"] == 0  # the new challenger did not score it


def test_the_previous_champion_is_scored_for_the_probation_only():
    engine = warm_engine(n=60, warmup=40)
    engine.apply(cmd("promote", "p1"))  # v2 champion, v1 previous
    v1 = engine.registry[1]
    before = v1.metrics.report()
    drive(engine, inline(two_concepts(30, seed=4), start=100))
    assert engine.previous == 1 and engine.status()["probation"]["n"] == 30
    assert v1.metrics.report() == before  # its metrics: the events it scored as champion
    assert engine.registry[2].metrics.n == 60 - 40 + 30  # as challenger, then champion


def test_a_probation_ends_with_a_lifecycle_event_that_says_why(elec):
    engine = Engine(EngineConfig(**AUTO))  # probation: 200 labels at most
    lifecycle = [e for _, events in drive(engine, inline(elec)) for e in events]
    ended = [e for e in lifecycle if e.type == "probation_ended"]
    promoted = {e.labelled: e.detail["from_version"] for e in lifecycle if e.type == "promoted"}
    early = [e for e in ended if e.detail["reason"].startswith("new champion better: evidence e=")]
    full = [e for e in ended if e.detail["reason"].startswith("probation over: 200/200")]
    assert early and full and len(early) + len(full) == len(ended)  # measured: 14 and 5
    for e in ended:  # it names the former champion that stops scoring, promoted at most 200 labels before
        at = max(labelled for labelled in promoted if labelled <= e.labelled)
        assert e.detail["previous"] == promoted[at] and e.labelled - at <= 200
    assert all(e.detail["statistic"]["rejected"] for e in early)  # the confirmation's own test
    assert all(e.labelled - max(p for p in promoted if p <= e.labelled) < 200 for e in early)


def test_rollback_to_the_oldest_retained_version_with_a_full_retention():
    # Retiring the current champion must not push the rollback target out of retention.
    engine = warm_engine(retain_versions=1)
    engine.apply(cmd("promote", "p1"))  # v2 champion, v1 previous
    drive(engine, inline(two_concepts(5, seed=1), start=100))
    engine.apply(cmd("promote", "p2"))  # v3 champion; v1 retained (the only slot), v2 previous
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "b1", to_version=1))
    assert [e.type for e in engine.take_lifecycle()] == ["rolled_back", "command_applied"]
    assert engine.champion == 1 and engine.registry[1].model is not None
    assert not engine.registry[1].metrics.frozen
    drive(engine, inline(two_concepts(5, seed=2), start=200))  # it serves and is evaluated


def test_snapshot_with_frozen_versions_restores_the_same_state(elec):
    engine = Engine(EngineConfig(retain_versions=2, **AUTO))
    drive(engine, inline(elec[:5000]))
    assert any(mv.metrics.frozen for mv in engine.registry)
    restored = Engine.restore(engine.snapshot(b"k"), b"k")
    assert restored.status() == engine.status()
    reports = [mv.metrics.report() for mv in engine.registry]
    assert [mv.metrics.report() for mv in restored.registry] == reports
    rest = inline(elec[5000:6000], start=5000)
    assert [o for o, _ in drive(restored, rest)] == [o for o, _ in drive(engine, rest)]


# --- copy init ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
                                  tree.HoeffdingTreeClassifier], ids=["logreg", "hoeffding"])
def test_copy_model_is_identical_and_independent(elec, make):
    model = make()
    for x, y in elec[:5000]:
        model.learn_one(x, y)
    twin, reference = copy_model(model), copy.deepcopy(model)
    probes = [x for x, _ in elec[5000:6000]]
    assert [twin.predict_proba_one(x) for x in probes] == [model.predict_proba_one(x) for x in probes]
    # both learn the same from here on, and the original does not move when the copy learns
    frozen = [model.predict_proba_one(x) for x in probes]
    for x, y in elec[6000:8000]:
        twin.learn_one(x, y)
        reference.learn_one(x, y)
    assert [twin.predict_proba_one(x) for x in probes] == [reference.predict_proba_one(x) for x in probes]
    assert [model.predict_proba_one(x) for x in probes] == frozen


def test_copy_model_falls_back_to_deepcopy_for_what_does_not_pickle():
    model = {"f": lambda v: v + 1, "w": [1.0]}
    twin = copy_model(model)
    assert twin["f"](1) == 2 and twin["w"] == [1.0] and twin["w"] is not model["w"]


def test_copy_initialised_challengers_score_like_deepcopies(elec):
    engine = Engine(EngineConfig(champion=LOGREG, warmup_labels=300, policy="manual"))
    drive(engine, inline(elec[:300]))
    champion, challenger = engine.registry[1].model, engine.registry[2].model
    assert challenger is not champion
    probes = [x for x, _ in elec[300:800]]
    answers = [champion.predict_proba_one(x) for x in probes]
    assert [challenger.predict_proba_one(x) for x in probes] == answers


# --- the window view ----------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[True, False], ["cat", "dog", "emu", 1, 2.0]])
def test_window_view_is_exactly_that_of_the_last_events(labels):
    """Reads at arbitrary moments (mid-fold too) see exactly the last `w` scored events."""
    rng = random.Random(11)
    w = 37
    m = Prequential(window=w)
    seen = []
    for i in range(3000):
        y = rng.choice(labels)
        y_pred = y if rng.random() < 0.7 else rng.choice(labels)
        m.update(y, y_pred, {y_pred: 0.9})
        seen.append((y, y_pred))
        if i % 13 == 0 or i > 2950:
            last = seen[-w:]
            fresh = Prequential(window=w)  # the same events from scratch, read once
            for t, p in last:
                fresh.update(t, p, {p: 0.9})
            got, want = m.windowed(), fresh.cumulative()
            assert got["n"] == len(last)
            assert got["accuracy"] == sum(t == p for t, p in last) / len(last)
            for key in ("f1", "precision", "recall", "log_loss"):
                assert got[key] == pytest.approx(want[key], abs=1e-12)


# --- the JSONL reader ----------------------------------------------------------------------


def test_decode_record_tells_events_from_labels_with_the_codec_checks():
    e = decode_record(b'{"id": "e", "features": {"x": 1.5, "n": 2, "b": true, "s": "a", "z": null}, "ts": 3}',
                      ("file", 0, 1))
    assert isinstance(e, Event) and e.features == {"x": 1.5, "n": 2, "b": True, "s": "a"} and e.ts == 3.0
    label = decode_record(b'{"id": "e", "label": "yes"}', ("file", 0, 2))
    assert isinstance(label, Label) and label.label == "yes"
    for line, reason in [
        (b'{"id": "e", "features": {"x": NaN}}', "feature 'x' is not finite (NaN/inf)"),
        (b'{"id": "e", "features": {"x": [1]}}', "feature 'x' has an unsupported type array"),
        (b'{"id": "e", "features": null, "label": true}', "missing features"),
        (b'{"id": "e"}', "missing label"),
        (b'[1, "features"]', "event must be a JSON object, got array"),
        (b"[1]", "label message must be a JSON object, got array"),
        (b'{"id": "e", "label": NaN}', "label is not finite (NaN/inf)"),
        (b"{nope", "not JSON"),
        (b"", "empty message"),
    ]:
        with pytest.raises(BadInputError, match=re.escape(reason)):
            decode_record(line, None)


def test_read_jsonl_skips_blank_lines_and_reports_bad_ones(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "features": {"x": 1.0}, "label": true}\r\n\n   \n'
                     b'{"id": "a", "label": false}\n{bad\n{"id": "b", "features": {"x": Infinity}}')
    records = list(read_jsonl(path))
    assert [type(r) for r in records] == [Event, Label, BadRecord, BadRecord]
    assert records[0].position == ("file", 0, 1) and records[1].position == ("file", 0, 4)
    assert records[2].line == 5 and records[3].line == 6 and "not finite" in records[3].reason


def test_a_snapshot_with_live_metrics_of_dropped_versions_freezes_them_on_restore():
    engine = warm_engine(n=60, warmup=40)
    old = engine.challenger
    engine.apply(cmd("reset_challenger", "r1"))
    dropped = engine.registry[old]
    dropped.metrics = Prequential(engine.config.window, engine.config.fading)  # as an older version left it
    restored = Engine.restore(engine.snapshot(b"k"), b"k")
    assert restored.registry[old].metrics.frozen
    assert restored.registry[old].metrics.report() == dropped.metrics.report()
    assert not restored.registry[restored.champion].metrics.frozen
