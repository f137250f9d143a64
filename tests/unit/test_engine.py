"""Functional tests of the champion/challenger engine (ARCHITECTURE.md §3-§4).

The engine is driven as ``worker replay`` drives it (:func:`drive`): each input is
processed, then the engine's own decisions are applied at once, and the lifecycle
events are collected after every step.

Exactness (§3): the champion's cumulative metrics equal
``river.evaluate.progressive_val_score`` on the same stream, bit for bit, with inline
labels and with labels delayed by ``k`` events. The delayed labels follow the ordering
rule of ``progressive_val_score(..., delay=k)`` (see tests/unit/test_metrics.py): before
event ``i`` is scored, every label ``j <= i - k`` not yet delivered is delivered, oldest
first; the remaining labels are delivered when the stream ends.
"""

from __future__ import annotations

import copy
import random

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing

from tests.datasets import elec2
from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.modelspec import parse_model
from worker.core.policy import PolicyConfig
from worker.core.split import serves_challenger
from worker.core.types import Command, Event, Label
from worker.errors import BadInputError, RefusedInputError, SnapshotError

LOGREG = "preprocessing.StandardScaler | linear_model.LogisticRegression"
SECRET = b"test-secret"


# --- helpers ---------------------------------------------------------------------------


def drive(engine, inputs):
    """Replay's loop: process each input, then apply the engine's own decisions at once.

    Returns one ``(output, lifecycle events)`` pair per input; the output is the
    Prediction of an event, None for a label.
    """
    outputs = []
    for item in inputs:
        out = engine.process(item) if isinstance(item, Event) else engine.process_label(item)
        for command in engine.take_decisions():
            engine.apply(command)
        outputs.append((out, engine.take_lifecycle()))
    return outputs


def inline(data, start=0):
    """Events with their label inline."""
    return [Event(id=str(i), features=x, label=y) for i, (x, y) in enumerate(data, start)]


def delayed(data, k):
    """Events without label and their labels, by the ordering rule of the module doc."""
    inputs, next_label = [], 0
    for i, (x, _) in enumerate(data):
        while next_label <= i - k:
            inputs.append(Label(id=str(next_label), label=data[next_label][1]))
            next_label += 1
        inputs.append(Event(id=str(i), features=x))
    inputs += [Label(id=str(j), label=data[j][1]) for j in range(next_label, len(data))]
    return inputs


def two_concepts(n, seed, switch=None):
    """x uniform in [-1, 1]^2; y = a + b > 0 (concept A), from ``switch`` on a - b > 0 (B)."""
    rng = random.Random(seed)
    data = []
    for i in range(n):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        concept_b = switch is not None and i >= switch
        data.append((x, (x["a"] - x["b"] > 0) if concept_b else (x["a"] + x["b"] > 0)))
    return data


def pvs(data, **kwargs):
    """progressive_val_score of a new StandardScaler | LogisticRegression: accuracy and F1."""
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    m = evaluate.progressive_val_score(data, model, metrics.Accuracy() + metrics.F1(), **kwargs)
    return {"accuracy": m[0].get(), "f1": m[1].get()}


def acc_f1(mv):
    c = mv.metrics.cumulative()
    return {"accuracy": c["accuracy"], "f1": c["f1"]}


def types(events):
    return [e.type for e in events]


def cmd(type_, command_id, **kwargs):
    return Command(type=type_, command_id=command_id, **kwargs)


def warm_engine(n=60, warmup=40, seed=0, **config):
    """A manual engine past its warm-up (challenger v2 exists), lifecycle drained."""
    engine = Engine(EngineConfig(warmup_labels=warmup, policy="manual", **config))
    drive(engine, inline(two_concepts(n, seed)))
    return engine


PROBES = [{"a": a / 4, "b": b / 4} for a in range(-3, 4, 2) for b in range(-3, 4, 2)]


def answers(model):
    return [model.predict_proba_one(x) for x in PROBES]


@pytest.fixture(scope="module")
def phishing():
    return list(datasets.Phishing())


@pytest.fixture(scope="module")
def elec():
    return list(elec2())


# --- 1. exactness ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phishing", "elec2"])
def test_champion_and_fresh_challenger_equal_progressive_val_score(request, name):
    data = request.getfixturevalue({"phishing": "phishing", "elec2": "elec"}[name])
    warmup = 300
    engine = Engine(EngineConfig(champion=LOGREG, challenger=LOGREG, challenger_init="fresh",
                                 warmup_labels=warmup, policy="manual", champion_learns=True))
    drive(engine, inline(data))
    assert engine.champion == 1 and engine.challenger == 2
    assert acc_f1(engine.registry[1]) == pvs(data)
    assert engine.registry[1].metrics.cumulative()["n"] == len(data)
    # The challenger is created right after the warmup-th label (event warmup - 1) was
    # learned, so it scores, then learns, every event from index `warmup` on.
    challenger = engine.registry[2]
    assert challenger.created_labelled == warmup
    assert challenger.metrics.cumulative()["n"] == challenger.learned == len(data) - warmup
    assert acc_f1(challenger) == pvs(data[warmup:])
    assert acc_f1(challenger) != pvs(data[warmup - 1:])  # the suffix is exact, not close


@pytest.mark.parametrize(("name", "k"), [("phishing", 1), ("phishing", 50), ("elec2", 7)])
def test_delayed_labels_equal_progressive_val_score_with_delay(request, name, k):
    data = request.getfixturevalue({"phishing": "phishing", "elec2": "elec"}[name])
    engine = Engine(EngineConfig(champion=LOGREG, warmup_labels=200, policy="manual",
                                 champion_learns=True))
    drive(engine, delayed(data, k))
    assert engine.counts["labelled"] == len(data)
    assert engine.status()["pending"]["predictions"] == 0
    expected = pvs(data, delay=k)
    assert acc_f1(engine.registry[1]) == expected
    assert expected != pvs(data, delay=k + 1)  # the ordering matters: the test can fail


# --- 2. cold start and roles -----------------------------------------------------------


def test_copy_challenger_is_a_trained_copy_and_the_champion_freezes():
    data = two_concepts(300, seed=1)
    warmup = 50
    engine = Engine(EngineConfig(warmup_labels=warmup, policy="manual"))
    out = drive(engine, inline(data[:warmup]))
    assert engine.challenger == 2
    assert types(out[-1][1]) == ["challenger_created"]
    assert out[-1][1][0].detail["init"] == "copy"
    assert all(types(life) == [] for _, life in out[:-1])
    assert all(p.shadow is None for p, _ in out[:-1])  # no challenger during the warm-up
    champion, challenger = engine.registry[1], engine.registry[2]
    assert champion.learned == warmup
    assert answers(challenger.model) == answers(champion.model)
    assert challenger.model is not champion.model
    frozen = copy.deepcopy(champion.model)
    before = answers(frozen)

    out = drive(engine, inline(data[warmup:], start=warmup))
    assert answers(champion.model) == before  # frozen: it no longer learns
    assert answers(challenger.model) != before  # the challenger kept learning
    assert champion.learned == warmup and challenger.learned == len(data) - warmup
    assert all(p.model_version == 1 and p.shadow["model_version"] == 2 for p, _ in out)
    lineage = engine.status()["models"]["challenger"]
    assert lineage["parent"] == 1
    assert lineage["created_labelled"] == warmup
    assert lineage["learned"] == len(data) - warmup
    assert lineage["reason"].startswith("copy: warm-up over")
    assert lineage["spec"] == champion.spec


def test_fresh_challenger_is_untrained_from_its_spec():
    spec = "linear_model.LogisticRegression(l2=0.01)"
    data = two_concepts(120, seed=2)
    engine = Engine(EngineConfig(warmup_labels=50, policy="manual", challenger=spec))
    out = drive(engine, inline(data[:50]))
    created = out[-1][1][0]
    assert created.type == "challenger_created"
    assert created.detail["init"] == "fresh" and created.detail["spec"] == spec
    challenger = engine.registry[2]
    assert answers(challenger.model) == answers(parse_model(spec))  # untrained
    assert answers(challenger.model) != answers(engine.registry[1].model)
    lineage = challenger.lineage()
    assert lineage["parent"] is None and lineage["reason"].startswith("fresh: ")
    assert lineage["spec"] == spec and lineage["learned"] == 0 and lineage["created_labelled"] == 50
    drive(engine, inline(data[50:], start=50))
    assert challenger.learned == 70


def test_champion_learns_keeps_version_1_learning():
    data = two_concepts(200, seed=3)
    engine = Engine(EngineConfig(warmup_labels=50, policy="manual", champion_learns=True))
    drive(engine, inline(data[:50]))
    before = answers(engine.registry[1].model)
    drive(engine, inline(data[50:], start=50))
    assert engine.registry[1].learned == 200
    assert answers(engine.registry[1].model) != before


def test_a_learning_champion_gets_fresh_challengers_unless_told_to_copy():
    # a copy of a learning champion would learn the same events and stay identical to it
    data = two_concepts(120, seed=4)
    for settings, init in (({}, "fresh"), ({"challenger_init": "copy"}, "copy")):
        engine = Engine(EngineConfig(warmup_labels=50, policy="manual", champion_learns=True, **settings))
        out = drive(engine, inline(data))
        created = next(e for _, life in out for e in life if e.type == "challenger_created")
        assert created.detail["init"] == init
        champion, challenger = engine.registry[1], engine.registry[2]
        assert (answers(challenger.model) == answers(champion.model)) is (init == "copy")
    assert EngineConfig(champion_learns=False).challenger_init == "copy"


# --- 3. pending buffers ----------------------------------------------------------------


def test_delayed_labels_are_joined_by_id_with_the_stored_prediction():
    data = two_concepts(400, seed=4)
    engine = Engine(EngineConfig(warmup_labels=100, policy="manual"))
    inputs = [Event(id=f"e{i}", features=x) for i, (x, _) in enumerate(data)]
    labels = [Label(id=f"e{i}", label=y) for i, (_, y) in enumerate(data)]
    random.Random(0).shuffle(labels)
    served = {p.id: p.prediction for p, _ in drive(engine, inputs)}
    assert engine.status()["pending"]["predictions"] == len(data)
    drive(engine, labels)
    status = engine.status()
    assert status["pending"]["predictions"] == 0 and status["pending"]["predictions_matched"] == len(data)
    assert engine.counts["labelled"] == len(data)
    # every label met the prediction made for its own id, whatever the arrival order
    truth = dict((f"e{i}", y) for i, (_, y) in enumerate(data))
    correct = sum(served[i] == truth[i] for i in served)
    assert engine.registry[1].metrics.cumulative()["accuracy"] == correct / len(data)


def test_label_before_its_event_waits_and_is_joined():
    data = two_concepts(100, seed=5)
    early_then_event = Engine(EngineConfig(warmup_labels=30))
    inline_run = Engine(EngineConfig(warmup_labels=30))
    inputs = []
    for i, (x, y) in enumerate(data):
        inputs += [Label(id=str(i), label=y), Event(id=str(i), features=x)]
    drive(early_then_event, inputs[:1])
    assert early_then_event.status()["pending"]["labels"] == 1
    assert early_then_event.counts["labelled"] == 0
    out = drive(early_then_event, inputs[1:])
    reference = drive(inline_run, inline(data))
    assert [o for o, _ in out if o is not None] == [p for p, _ in reference]
    assert acc_f1(early_then_event.registry[1]) == acc_f1(inline_run.registry[1])
    pending = early_then_event.status()["pending"]
    assert pending["labels"] == 0 and pending["labels_matched"] == len(data)
    assert early_then_event.counts["labelled"] == len(data)


def test_duplicate_pending_id_is_bad_input_and_counted():
    engine = Engine(EngineConfig(warmup_labels=5))
    engine.process(Event(id="a", features={"a": 1.0, "b": 0.0}))
    with pytest.raises(BadInputError, match="already pending"):
        engine.process(Event(id="a", features={"a": -1.0, "b": 0.0}))
    assert engine.counts["bad"] == 1 and engine.counts["events"] == 1
    assert engine.status()["pending"]["predictions_duplicates"] == 1
    engine.process_label(Label(id="a", label=True))  # the first event stays and joins
    assert engine.counts["labelled"] == 1
    # a second early label for the same id is refused as well
    engine.process_label(Label(id="z", label=True))
    with pytest.raises(BadInputError, match="already pending"):
        engine.process_label(Label(id="z", label=False))
    assert engine.counts["bad"] == 2
    assert engine.status()["pending"]["labels_duplicates"] == 1


def test_a_drift_alarm_holds_back_its_own_challenger_only():
    """A rising-error alarm within the grace period blocks that challenger's promotion;
    once it is replaced (here by an operator's reset), the next one is promoted as soon as
    its test says so, not a grace period after the other one's alarm."""
    promotion = PolicyConfig(min_labels=30, cooldown=10, grace=300, probation=100)
    engine = Engine(EngineConfig(warmup_labels=200, promotion=promotion))
    drive(engine, inline(two_concepts(200, seed=1)))  # concept A; the champion is then frozen
    engine._on_drift(engine.registry[engine.challenger], (0.1, 0.4))  # as ADWIN reports a rise
    engine.apply(cmd("reset_challenger", "r1"))
    after = drive(engine, inline(two_concepts(300, seed=2, switch=0), start=1000))  # concept B
    promoted = [i for i, (_, events) in enumerate(after) if "promoted" in types(events)]
    assert promoted and promoted[0] < 200, promoted  # it was 299 when the alarm leaked


def test_a_rollback_goes_to_a_former_champion_only():
    """A challenger reset away is never champion; even if its model can still be read (it
    was published while a split served it), a rollback to it is refused."""
    engine = warm_engine()
    discarded = engine.challenger
    model = engine.registry[discarded].model
    engine.apply(cmd("reset_challenger", "r1"))
    engine.model_source = lambda version: model if version == discarded else None
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "rb", to_version=discarded))
    answer = engine.take_lifecycle()[-1]
    assert answer.type == "command_rejected" and "was never champion" in answer.detail["reason"]
    assert engine.champion == 1


def test_an_inline_label_learns_an_id_once_whatever_waits_for_it():
    """A copy of a pending event that carries its label is refused like any duplicate; a
    label that came first for an event that brings its own is dropped, so that it cannot
    join a later copy. Either way the id is learned once."""
    engine = Engine(EngineConfig(warmup_labels=50))
    engine.process(Event(id="a", features={"a": 1.0, "b": 0.0}))
    with pytest.raises(BadInputError, match="already pending"):
        engine.process(Event(id="a", features={"a": 1.0, "b": 0.0}, label=True))
    engine.process_label(Label(id="a", label=True))
    assert engine.counts["labelled"] == 1 and engine.counts["bad"] == 1

    engine.process_label(Label(id="b", label=False))
    engine.process(Event(id="b", features={"a": 0.0, "b": 1.0}, label=True))
    assert engine.counts["labelled"] == 2
    pending = engine.status()["pending"]
    assert pending["labels"] == 0 and pending["labels_duplicates"] == 1
    engine.process(Event(id="b", features={"a": 0.0, "b": 2.0}))  # waits for a label of its own
    assert engine.counts["labelled"] == 2 and engine.status()["pending"]["predictions"] == 1


def test_eviction_by_count_is_counted_and_nothing_is_lost():
    engine = Engine(EngineConfig(warmup_labels=5, pending_max=3))
    for i in range(5):
        engine.process(Event(id=str(i), features={"a": float(i), "b": 0.0}))
    pending = engine.status()["pending"]
    assert pending["predictions"] == 3 and pending["predictions_evicted_capacity"] == 2
    for i in range(5):
        engine.process_label(Label(id=str(i), label=True))
    pending = engine.status()["pending"]
    # 3 labels joined; the 2 whose predictions were evicted came late: counted, dropped
    assert engine.counts["labelled"] == 3 and pending["predictions_matched"] == 3
    assert pending["labels"] == 0 and pending["labels_late"] == 2
    # every event is joined, still pending, or counted as evicted
    kinds = ("predictions_matched", "predictions", "predictions_evicted_capacity")
    assert sum(pending[k] for k in kinds) == 5
    for i in range(5, 9):  # labels of events not seen (yet): they wait for them
        engine.process_label(Label(id=str(i), label=True))
    pending = engine.status()["pending"]
    assert pending["labels"] == 3 and pending["labels_evicted_capacity"] == 1 and pending["labels_late"] == 2


def test_eviction_by_age_in_events_and_in_event_time():
    engine = Engine(EngineConfig(warmup_labels=5, pending_ttl=5))
    engine.process(Event(id="old", features={"a": 1.0, "b": 0.0}))
    engine.process_label(Label(id="orphan", label=True))
    for i in range(5):
        engine.process(Event(id=str(i), features={"a": 0.0, "b": 1.0}, label=True))
    assert engine.status()["pending"]["predictions"] == 1  # age 5 is not > 5
    engine.process(Event(id="5", features={"a": 0.0, "b": 1.0}, label=True))
    engine.process(Event(id="6", features={"a": 0.0, "b": 1.0}, label=True))
    pending = engine.status()["pending"]
    assert pending["predictions"] == 0 and pending["predictions_evicted_age"] == 1
    assert pending["labels"] == 0 and pending["labels_evicted_age"] == 1
    engine.process_label(Label(id="old", label=True))  # too late: counted as late, not kept
    engine.process_label(Label(id="unknown", label=True))  # its event may still come: it waits
    pending = engine.status()["pending"]
    assert pending["labels_late"] == 1 and pending["labels"] == 1

    # by event time: the clock is the earlier of the last two, each entry dated by its own
    timed = Engine(EngineConfig(warmup_labels=5, pending_ttl=60.0))
    for i, ts in enumerate((1000.0, 1060.0, 1060.5)):
        timed.process(Event(id=f"t{i}", features={"a": 1.0, "b": 0.0}, ts=ts))
    pending = timed.status()["pending"]
    assert pending["predictions"] == 3 and pending["predictions_evicted_age"] == 0  # clock 1060: age 60
    timed.process(Event(id="t3", features={"a": 1.0, "b": 0.0}, ts=1061.0))
    pending = timed.status()["pending"]
    assert pending["predictions"] == 3 and pending["predictions_evicted_age"] == 1  # t0: 60.5 s


def test_one_event_dated_far_ahead_does_not_expire_what_waits():
    """Its clock alone would have expired every pending prediction, and the labels on
    their way would have joined nothing."""
    engine = Engine(EngineConfig(warmup_labels=5, pending_ttl=3600.0))
    for i in range(50):
        engine.process(Event(id=f"e{i}", features={"a": 1.0}, ts=1_764_160_000.0 + i))
    engine.process(Event(id="typo", features={"a": 1.0}, ts=99_999_999_999.0))  # a year 5138 clock
    engine.process(Event(id="next", features={"a": 1.0}, ts=1_764_160_051.0))
    for i in range(50):
        engine.process_label(Label(id=f"e{i}", label=True, ts=1_764_160_060.0))
    pending = engine.status()["pending"]
    assert pending["predictions_evicted_age"] == 0 and engine.counts["labelled"] == 50


def test_a_stream_that_mixes_timed_and_untimed_messages_ages_by_event_time():
    """Producers that send `ts` and producers that do not, on one stream: the untimed
    ones take the last event time seen, so nothing is evicted within pending_ttl."""
    engine = Engine(EngineConfig(warmup_labels=5, pending_ttl=60.0))
    for i in range(40):
        ts = 1_764_160_000.0 + i if i % 2 else None
        engine.process(Event(id=str(i), features={"a": float(i % 3)}, ts=ts))
    engine.process_label(Label(id="early", label=True))  # untimed, before its event
    for i in range(40):
        engine.process_label(Label(id=str(i), label=i % 2 == 0, ts=1_764_160_050.0 if i % 4 else None))
    engine.process(Event(id="early", features={"a": 1.0}, ts=1_764_160_051.0))
    pending = engine.status()["pending"]
    assert pending["predictions_evicted_age"] == pending["labels_evicted_age"] == 0
    assert engine.counts["labelled"] == 41 and pending["predictions"] == pending["labels"] == 0
    engine.process(Event(id="late", features={"a": 1.0}))  # untimed: stamped 1_764_160_050 (the clock)
    engine.process(Event(id="next", features={"a": 1.0}, ts=1_764_160_111.0))  # the clock: ...051
    assert engine.status()["pending"]["predictions_evicted_age"] == 0
    engine.process(Event(id="then", features={"a": 1.0}, ts=1_764_160_112.0))  # the clock: ...111
    assert engine.status()["pending"]["predictions_evicted_age"] == 1  # 61 s > 60 s


def test_a_label_beyond_max_classes_is_refused():
    """A continuous target or an id sent as the label grows every model and metric with
    each event (60,000 distinct labels made a status report take 7 s)."""
    engine = Engine(EngineConfig(champion="tree.HoeffdingTreeClassifier", warmup_labels=5, max_classes=3))
    for i, label in enumerate("abcab"):
        engine.process(Event(id=f"e{i}", features={"x": float(i)}, label=label))
    with pytest.raises(RefusedInputError, match=r"label 'd' would be distinct label number 4, over max_cl"):
        engine.process(Event(id="e-d", features={"x": 1.0}, label="d"))
    engine.process(Event(id="later", features={"x": 1.0}))
    with pytest.raises(RefusedInputError, match="over max_classes"):
        engine.process_label(Label(id="later", label=4.25))
    engine.process_label(Label(id="later", label="c"))  # a known class joins as ever
    assert engine.counts["labelled"] == 6 and engine.counts["bad"] == 2
    restored = Engine.restore(engine.snapshot(b"k"), b"k")
    with pytest.raises(RefusedInputError, match="over max_classes"):
        restored.process(Event(id="e-e", features={"x": 1.0}, label="e"))


def test_a_message_refused_for_another_reason_takes_no_class():
    engine = Engine(EngineConfig(champion="tree.HoeffdingTreeClassifier", warmup_labels=5, max_classes=2))
    engine.process(Event(id="a", features={"x": 1.0}))  # pending: a labelled copy is refused
    for junk in ("junk-1", "junk-2"):
        with pytest.raises(RefusedInputError, match="is already pending"):
            engine.process(Event(id="a", features={"x": 1.0}, label=junk))
    for i, label in enumerate("uvuv"):
        engine.process(Event(id=f"e{i}", features={"x": float(i)}, label=label))
    assert engine.counts["labelled"] == 4


def test_a_challenger_that_cannot_score_the_events_does_not_stop_serving():
    """Only the champion's error makes an event bad: a challenger spec that does not take
    the events' features is counted on every event, which the champion serves as usual
    (it would otherwise dead-letter them all, and nothing would be served)."""
    engine = Engine(EngineConfig(champion='compose.Discard("a") | linear_model.LogisticRegression()',
                                 challenger="linear_model.LogisticRegression()", warmup_labels=20))
    served = [engine.process(Event(id=f"e{i}", features={"a": "text", "b": i / 100}, label=i % 2 == 0))
              for i in range(100)]
    assert [p.served_by for p in served] == ["champion"] * 100 and engine.champion == 1
    assert all(p.shadow is None for p in served[20:])  # no challenger score to show
    assert engine.counts["bad"] == 0 and engine.counts["events"] == engine.counts["labelled"] == 100
    assert engine.counts["shadow_errors"] == 80  # every event once the challenger exists
    assert engine.shadow_error.startswith(f"v{engine.challenger} could not score an event: TypeError")
    engine.apply(cmd("set_split", "s1", percent=100.0))  # a split serves the champion where it cannot
    assert engine.process(Event(id="x", features={"a": "text", "b": 0.5}, key="k")).served_by == "champion"


def test_event_on_which_a_model_raises_is_bad_and_the_engine_goes_on():
    data = two_concepts(120, seed=6)
    engine = Engine(EngineConfig(champion=LOGREG, warmup_labels=50))
    twin = Engine(EngineConfig(champion=LOGREG, warmup_labels=50))
    drive(engine, inline(data[:80]))
    drive(twin, inline(data[:80]))
    with pytest.raises(BadInputError, match="model raised"):
        engine.process(Event(id="bad", features={"a": "oops", "b": 1.0}, label=True))
    assert engine.counts["bad"] == 1
    assert engine.counts["events"] == twin.counts["events"] == 80
    assert engine.counts["labelled"] == 80  # its label was not learned
    assert engine.status()["pending"]["predictions"] == 0
    # the next events are served exactly as if the bad one had never come
    assert drive(engine, inline(data[80:], start=80)) == drive(twin, inline(data[80:], start=80))
    assert engine.counts["events"] == 120


# --- 4. commands -----------------------------------------------------------------------


def test_promote_emits_promoted_challenger_created_applied_with_the_command_id():
    engine = warm_engine()
    engine.apply(cmd("promote", "p1", expected_champion=1, reason="looks better"))
    events = engine.take_lifecycle()
    assert types(events) == ["promoted", "challenger_created", "command_applied"]
    assert all(e.command_id == "p1" for e in events)
    assert events[0].detail["from_version"] == 1 and events[0].detail["to_version"] == 2
    assert (engine.champion, engine.previous, engine.challenger) == (2, 1, 3)
    assert engine.counts["promotions"] == 1
    assert engine.registry[3].parent == 2  # copied from the new champion
    assert engine.champion_history == [1, 2]


def test_commands_are_idempotent_by_command_id():
    engine = warm_engine()
    command = cmd("promote", "p1")
    engine.apply(command)
    engine.take_lifecycle()
    engine.apply(command)
    assert engine.take_lifecycle() == []
    assert engine.champion == 2 and engine.counts["promotions"] == 1
    engine.apply(cmd("reset_challenger", "r1"))
    engine.apply(cmd("reset_challenger", "r1"))
    assert engine.challenger == 4 and engine.counts["resets"] == 1
    engine.apply(cmd("set_split", "s1", percent=10.0))
    engine.apply(cmd("set_split", "s1", percent=90.0))  # same id: ignored
    assert engine.split == 10.0


def test_rollback_to_previous_and_to_a_version():
    engine = warm_engine()
    engine.apply(cmd("promote", "p1"))
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "b1", expected_champion=2, reason="bad"))
    events = engine.take_lifecycle()
    assert types(events) == ["rolled_back", "command_applied"]
    assert all(e.command_id == "b1" for e in events)
    assert events[0].detail["from_version"] == 2 and events[0].detail["to_version"] == 1
    assert engine.champion == 1 and engine.previous is None and engine.challenger == 3
    assert engine.counts["rollbacks"] == 1
    drive(engine, inline(two_concepts(10, seed=9), start=1000))
    engine.apply(cmd("promote", "p2"))  # v3
    drive(engine, inline(two_concepts(10, seed=10), start=2000))
    engine.apply(cmd("promote", "p3"))  # v4; v1 and v3 are retained former champions
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "b2", to_version=1))
    events = engine.take_lifecycle()
    assert types(events) == ["rolled_back", "command_applied"]
    assert events[0].detail["from_version"] == 4 and events[0].detail["to_version"] == 1
    assert engine.champion == 1 and engine.champion_history == [1, 2, 1, 3, 4, 1]
    # the restored champion serves
    p = engine.process(Event(id="after", features={"a": 0.5, "b": 0.5}))
    assert p.model_version == 1 and p.shadow["model_version"] == engine.challenger


def test_a_second_rollback_goes_one_further_back_not_to_the_model_just_removed():
    engine = warm_engine(retain_versions=5)
    for i in range(3):  # v2, v3, v4 promoted in turn
        engine.apply(cmd("promote", f"p{i}"))
        drive(engine, inline(two_concepts(10, seed=i), start=1000 * (i + 1)))
    engine.take_lifecycle()
    steps = []
    for i in range(3):
        engine.apply(cmd("rollback", f"b{i}"))
        events = engine.take_lifecycle()
        steps.append(tuple(e.detail["to_version"] for e in events if e.type == "rolled_back"))
    assert steps == [(3,), (2,), (1,)]
    engine.apply(cmd("rollback", "b-last"))
    assert engine.take_lifecycle()[0].detail["reason"] == "no former champion to roll back to"


def test_a_dropped_former_champion_comes_back_from_the_model_source_for_a_rollback():
    engine = warm_engine(retain_versions=1)
    published = {1: copy.deepcopy(engine.registry[1].model)}  # what the worker wrote to `models`
    for i in range(3):  # v2, v3, v4 promoted in turn: v1 is pushed out of retention
        engine.apply(cmd("promote", f"p{i}"))
        drive(engine, inline(two_concepts(10, seed=20 + i), start=1000 * (i + 1)))
    assert engine.registry[1].model is None and engine.registry[1].metrics.frozen
    engine.take_lifecycle()

    engine.apply(cmd("rollback", "b1", to_version=1))  # no source: as before
    [rejected] = engine.take_lifecycle()
    assert rejected.type == "command_rejected" and "v1 is not a retained version" in rejected.detail["reason"]

    engine.model_source = published.get
    discarded = engine.challenger
    engine.apply(cmd("reset_challenger", "r1"))
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "b2", to_version=discarded))  # a discarded challenger: never champion
    reason = engine.take_lifecycle()[0].detail["reason"]
    assert f"v{discarded} was never champion" in reason

    engine.apply(cmd("rollback", "b3", to_version=1))
    assert types(engine.take_lifecycle()) == ["rolled_back", "command_applied"]
    assert engine.champion == 1 and not engine.registry[1].metrics.frozen  # metrics start afresh
    x = {"a": 0.3, "b": -0.2}
    p = engine.process(Event(id="after", features=x))
    assert p.model_version == 1 and p.proba == published[1].predict_proba_one(x)

    def broken(version):
        raise SnapshotError("signature mismatch")

    engine.model_source = broken
    engine.apply(cmd("rollback", "b4", to_version=2))  # v2 was pushed out by v1 coming back
    reason = engine.take_lifecycle()[0].detail["reason"]
    assert "v2 is not retained, and reading it back failed: signature mismatch" in reason, reason


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (cmd("promote", "x", expected_champion=7), "stale"),
        (cmd("rollback", "x", to_version=99), "v99 does not exist"),
        (cmd("rollback", "x"), "no former champion to roll back to"),
        (cmd("rollback", "x", to_version=1), "already the champion"),
        (cmd("set_split", "x", percent=150.0), "between 0 and 100"),
        (cmd("set_split", "x"), "between 0 and 100"),
        (cmd("retrain", "x"), "unknown command type"),
    ],
)
def test_invalid_or_stale_commands_are_rejected_with_a_reason(command, reason):
    engine = warm_engine()
    before = engine.status()
    engine.apply(command)
    events = engine.take_lifecycle()
    assert types(events) == ["command_rejected"]
    assert events[0].command_id == "x" and reason in events[0].detail["reason"]
    assert engine.status() == before  # nothing changed


def test_commands_during_warm_up_are_rejected():
    engine = Engine(EngineConfig(warmup_labels=100, policy="manual"))
    drive(engine, inline(two_concepts(10, seed=0)))
    for i, kind in enumerate(["promote", "reset_challenger", "rollback"]):
        engine.apply(cmd(kind, f"w{i}"))
        events = engine.take_lifecycle()
        assert types(events) == ["command_rejected"], kind
        assert events[0].command_id == f"w{i}"
    assert engine.champion == 1 and engine.challenger is None


def test_rollback_to_the_challenger_is_rejected():
    # The challenger is not a former champion: "rolling back" to it would make one model
    # both champion and challenger.
    engine = warm_engine()
    engine.apply(cmd("promote", "p1"))
    engine.take_lifecycle()
    engine.apply(cmd("rollback", "b1", to_version=engine.challenger))
    events = engine.take_lifecycle()
    assert types(events) == ["command_rejected"]
    assert engine.champion == 2 and engine.challenger == 3


def test_pause_and_resume_learning():
    data = two_concepts(160, seed=7)
    engine = warm_engine(n=0, warmup=40)
    drive(engine, inline(data[:60]))
    challenger = engine.registry[engine.challenger]
    learned, labelled = challenger.learned, engine.counts["labelled"]
    frozen = answers(challenger.model)
    engine.apply(cmd("pause_learning", "pause"))
    assert types(engine.take_lifecycle()) == ["command_applied"]
    drive(engine, inline(data[60:110], start=60))
    assert challenger.learned == learned and answers(challenger.model) == frozen
    assert engine.counts["labelled"] == labelled + 50  # it still scores and evaluates
    assert challenger.metrics.n == learned + 50
    assert engine.status()["learning"] is False
    engine.apply(cmd("resume_learning", "resume"))
    drive(engine, inline(data[110:], start=110))
    assert challenger.learned == learned + 50
    assert engine.status()["learning"] is True


def test_pause_during_warm_up_freezes_the_champion_too_and_holds_the_warm_up():
    """Labels seen while paused do not count towards the warm-up: it ended on them, and
    froze an untrained version 1 as champion."""
    data = two_concepts(160, seed=0)
    engine = Engine(EngineConfig(warmup_labels=100, policy="manual"))
    engine.apply(cmd("pause_learning", "pause"))
    drive(engine, inline(data[:120]))
    assert engine.registry[1].learned == 0 and engine.challenger is None
    engine.apply(cmd("resume_learning", "resume"))
    drive(engine, inline(data[120:], start=120))
    assert engine.challenger is None, "40 learned so far"
    outputs = drive(engine, inline(two_concepts(60, seed=1), start=160))
    assert engine.challenger == 2 and engine.registry[1].learned == 100
    created = [e for _, events in outputs for e in events if e.type == "challenger_created"]
    assert created[0].labelled == 220  # 120 while paused, then 100 learned
    assert created[0].detail["reason"] == "warm-up over after 100 labelled events"


def test_reset_challenger_replaces_it_with_a_new_version():
    engine = warm_engine()
    engine.apply(cmd("reset_challenger", "r1", reason="operator says so"))
    events = engine.take_lifecycle()
    assert types(events) == ["challenger_reset", "challenger_created", "command_applied"]
    assert all(e.command_id == "r1" for e in events)
    assert events[0].detail["version"] == 2 and events[0].detail["reason"] == "operator says so"
    assert engine.challenger == 3 and engine.registry[2].model is None
    assert engine.registry[3].learned == 0 and engine.registry[3].created_labelled == 60
    assert engine.counts["resets"] == 1


def test_snapshot_and_status_commands():
    engine = warm_engine()
    assert engine.snapshot_requested is False
    engine.apply(cmd("snapshot", "snap"))
    assert engine.snapshot_requested is True
    assert types(engine.take_lifecycle()) == ["command_applied"]
    engine.apply(cmd("status", "st"))
    events = engine.take_lifecycle()
    assert types(events) == ["status_report", "command_applied"]
    assert all(e.command_id == "st" for e in events)
    report = events[0].detail
    assert report == engine.status()
    assert report["champion"] == 1 and report["challenger"] == 2 and report["counts"]["labelled"] == 60
    assert report["models"]["champion"]["metrics"]["cumulative"]["n"] == 60


def test_periodic_status_report_and_undecodable_count_survive_a_snapshot():
    engine = warm_engine()
    engine.count_undecodable()
    engine.count_undecodable()
    engine.report_status()
    (event,) = engine.take_lifecycle()
    assert event.type == "status_report" and event.command_id is None  # answers no command
    assert event.detail["counts"]["undecodable"] == 2 and event.detail["counts"]["bad"] == 0
    assert engine.take_decisions() == []
    restored = Engine.restore(engine.snapshot(b"k"), b"k")
    assert restored.status()["counts"] == engine.status()["counts"]


def test_probation_pairs_only_the_current_champion_and_previous():
    # An event scored while v2 was champion (v1 previous) whose label comes after a
    # rollback and a new promotion (v3 champion, v1 previous again) must not count in
    # the probation test of v3 against v1.
    engine = warm_engine()
    engine.apply(cmd("promote", "p1"))  # v2 champion, v1 previous
    engine.process(Event(id="late", features={"a": 0.3, "b": 0.1}))
    engine.apply(cmd("rollback", "b1"))  # v1 champion
    engine.apply(cmd("promote", "p2"))  # v3 champion, v1 previous
    assert (engine.champion, engine.previous) == (3, 1)
    engine.process_label(Label(id="late", label=True))
    assert engine.status()["probation"]["n"] == 0
    engine.process(Event(id="now", features={"a": 0.3, "b": 0.1}, label=True))
    assert engine.status()["probation"]["n"] == 1


def test_auto_decisions_are_commands_applied_once_with_their_lifecycle():
    data = two_concepts(900, seed=8, switch=400)
    engine = Engine(EngineConfig(warmup_labels=200, challenger="linear_model.LogisticRegression"))
    decisions, lifecycle = [], []
    for event in inline(data):
        engine.process(event)
        decisions += engine.take_decisions()
        if decisions and not lifecycle:
            lifecycle = engine.take_lifecycle()
            break
    assert decisions, "the drift should make the challenger win"
    decision = decisions[0]
    assert (decision.type, decision.issued_by, decision.expected_champion) == ("promote", "worker", 1)
    mine = [e for e in lifecycle if e.command_id == decision.command_id]
    assert types(mine) == ["promoted", "challenger_created", "command_applied"]
    assert engine.champion == mine[0].detail["to_version"] != 1
    assert mine[0].detail["issued_by"] == "worker"
    # reading the decision back from the control log changes nothing
    before = engine.status()
    engine.apply(decision)
    assert engine.take_lifecycle() == [] and engine.status() == before


# --- 5. traffic split ------------------------------------------------------------------


def test_split_serves_about_p_percent_of_entities_stickily():
    engine = warm_engine(n=100, warmup=50)
    assert engine.serving_learners() == []  # the champion is frozen, the challenger serves nobody
    engine.apply(cmd("set_split", "split", percent=30.0))
    applied = engine.take_lifecycle()
    assert types(applied) == ["command_applied"] and applied[0].split == 30.0  # what scorers follow
    assert engine.serving_learners() == [engine.challenger]
    keys = [f"user-{i}" for i in range(1500)]
    rng = random.Random(11)
    arms, truth = {}, {}
    inputs = []
    for n in range(4500):
        x = {"a": rng.uniform(-1, 1), "b": rng.uniform(-1, 1)}
        inputs.append(Event(id=f"s{n}", features=x, label=x["a"] + x["b"] > 0, key=keys[n % len(keys)]))
        truth[f"s{n}"] = x["a"] + x["b"] > 0
    out = [p for p, _ in drive(engine, inputs)]
    for p in out:
        arms.setdefault(p.key, set()).add(p.served_by)
        expected = "challenger" if serves_challenger(p.key, 30.0, p.id) else "champion"
        assert p.served_by == expected
        version = engine.challenger if p.served_by == "challenger" else engine.champion
        other = engine.champion if p.served_by == "challenger" else engine.challenger
        assert p.model_version == version and p.shadow["model_version"] == other
    assert all(len(a) == 1 for a in arms.values())  # sticky: one arm per key
    share = sum(a == {"challenger"} for a in arms.values()) / len(arms)
    # 1500 keys, Binomial(1500, 0.3) / 1500 has sd 0.0118: 4 sd either side
    assert abs(share - 0.30) < 0.048
    report = engine.status()["arms"]
    for arm in ("champion", "challenger"):
        served = [p for p in out if p.served_by == arm]
        cumulative = report[arm]["cumulative"]
        assert cumulative["n"] == len(served) > 0
        assert cumulative["accuracy"] == sum(p.prediction == truth[p.id] for p in served) / len(served)
    engine.apply(cmd("set_split", "off", percent=0.0))
    assert engine.process(Event(id="z", features={"a": 0.0, "b": 0.0}, key=keys[0])).served_by == "champion"
    assert engine.take_lifecycle()[-1].split == 0.0 and engine.serving_learners() == []
    drive(engine, inputs[:100])
    assert engine.status()["arms"] == report, "the A/B compares the arms under the split only"


def test_the_champion_serves_while_it_learns_in_its_warm_up_or_with_champion_learns():
    assert warm_engine(n=10, warmup=50).serving_learners() == [1]
    assert warm_engine(n=100, warmup=50).serving_learners() == []
    learns = warm_engine(n=100, warmup=50, champion_learns=True)
    assert learns.warmed_up and learns.serving_learners() == [1]


def test_no_arms_before_a_split_is_set():
    assert warm_engine().status()["arms"] is None


# --- 6. state --------------------------------------------------------------------------


def drift_inputs(n=3000, switch=1200, seed=21):
    """A drifting stream: most labels inline, every third one delayed by 5 inputs."""
    data = two_concepts(n, seed, switch=switch)
    inputs, late = [], []
    for i, (x, y) in enumerate(data):
        if i % 3 == 0:
            inputs.append(Event(id=str(i), features=x, ts=float(i)))
            late.append((i + 5, Label(id=str(i), label=y, ts=float(i))))
        else:
            inputs.append(Event(id=str(i), features=x, label=y, ts=float(i)))
        while late and late[0][0] <= i:
            inputs.append(late.pop(0)[1])
    return inputs + [label for _, label in late]


AUTO = dict(warmup_labels=300, policy="auto",
            promotion=PolicyConfig(min_labels=100, cooldown=50, probation=300, grace=200))


def everything(engine):
    """Everything observable about an engine's state."""
    return engine.status(), [(mv.lineage(), mv.metrics.report()) for mv in engine.registry]


@pytest.fixture(scope="module")
def uninterrupted():
    inputs = drift_inputs()
    engine = Engine(EngineConfig(**AUTO))
    out = drive(engine, inputs)
    return inputs, out, engine


def test_uninterrupted_drift_run_has_promotions(uninterrupted):
    _, out, engine = uninterrupted
    kinds = [e.type for _, life in out for e in life]
    assert kinds.count("promoted") >= 1 and engine.counts["promotions"] >= 1
    assert "drift_detected" in kinds


# after the warm-up; between a drift reset and the next promotion; during a probation
@pytest.mark.parametrize("split", [450, 1700, 2650])
def test_snapshot_restore_continues_exactly_like_an_uninterrupted_run(uninterrupted, split):
    inputs, out, reference = uninterrupted
    engine = Engine(EngineConfig(**AUTO))
    head = drive(engine, inputs[:split])
    assert head == out[:split]
    blob = engine.snapshot(SECRET)
    restored = Engine.restore(blob, SECRET)
    assert restored is not engine
    assert drive(restored, inputs[split:]) == out[split:]
    assert everything(restored) == everything(reference)
    # taking the snapshot disturbed nothing either
    assert drive(engine, inputs[split:]) == out[split:]


def test_snapshot_with_a_wrong_secret_or_tampered_bytes_is_refused():
    engine = warm_engine()
    blob = engine.snapshot(SECRET)
    with pytest.raises(SnapshotError):
        Engine.restore(blob, b"another secret")
    tampered = bytearray(blob)
    tampered[-10] ^= 0x01
    with pytest.raises(SnapshotError):
        Engine.restore(bytes(tampered), SECRET)
    assert Engine.restore(blob, SECRET).challenger == 2


def test_restore_keeps_the_models_and_applies_a_new_challenger_spec_to_the_next_challenger():
    engine = warm_engine(warmup=40, n=80)
    blob = engine.snapshot(SECRET)
    spec = "tree.HoeffdingTreeClassifier(grace_period=50)"
    new_config = EngineConfig(warmup_labels=40, policy="manual", challenger=spec)
    restored = Engine.restore(blob, SECRET, new_config)
    assert restored.config is new_config
    assert (restored.champion, restored.challenger) == (1, 2)
    for version in (1, 2):
        assert restored.registry[version].spec == engine.registry[version].spec
        assert answers(restored.registry[version].model) == answers(engine.registry[version].model)
    restored.apply(cmd("reset_challenger", "r1"))
    created = [e for e in restored.take_lifecycle() if e.type == "challenger_created"]
    assert created[0].detail["spec"] == spec and created[0].detail["init"] == "fresh"
    assert restored.registry[3].spec == spec
    assert answers(restored.registry[3].model) == answers(parse_model(spec))
