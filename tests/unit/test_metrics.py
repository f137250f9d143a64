"""Prequential metrics against river's own evaluation, to the last bit.

Ordering rule with delayed labels (what ``progressive_val_score(..., delay=k)`` does,
through ``stream.simulate_qa(dataset, moment=None, delay=k)``; see
``test_delayed_labels_match_progressive_val_score``):

- event ``i`` is scored (``predict_proba_one``; the prediction and proba are stored)
  when it arrives;
- its label is revealed just *before* event ``i + k`` is scored: at the arrival of
  event ``i``, first every pending label ``j <= i - k`` is processed, oldest first —
  metric update with the prediction stored at question time, then ``learn_one(x_j,
  y_j)`` — and only then is event ``i`` scored;
- when the stream ends, the remaining labels are processed in arrival order.

So with ``k = 0`` (or no delay) each event is scored, then its metric is updated, then
the model learns — before the next event is scored.
"""

from __future__ import annotations

import collections
import math
import pickle
import random

import pytest
from river import datasets, evaluate, linear_model, metrics, preprocessing, tree, utils

from tests.datasets import elec2
from worker.core.metrics import Prequential, predict_from_proba
from worker.errors import ConfigError


def logreg():
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def hoeffding():
    return tree.HoeffdingTreeClassifier()


@pytest.fixture(scope="module")
def phishing():
    return list(datasets.Phishing())


def run_prequential(data, model, **kwargs):
    """The engine's loop without delay: score, update the metrics, learn."""
    m = Prequential(**kwargs)
    for x, y in data:
        proba = model.predict_proba_one(x)
        m.update(y, predict_from_proba(proba), proba)
        model.learn_one(x, y)
    return m


def river_score(data, make_model, metric, **kwargs):
    return evaluate.progressive_val_score(data, make_model(), metric, **kwargs).get()


# 1. exactness on Phishing --------------------------------------------------------------


@pytest.mark.parametrize("make_model", [logreg, hoeffding], ids=["logreg", "hoeffding"])
def test_cumulative_equals_progressive_val_score_on_phishing(phishing, make_model):
    m = run_prequential(phishing, make_model())
    c = m.cumulative()
    assert m.binary
    assert c["accuracy"] == river_score(phishing, make_model, metrics.Accuracy())
    assert c["f1"] == river_score(phishing, make_model, metrics.F1())
    assert c["precision"] == river_score(phishing, make_model, metrics.Precision())
    assert c["recall"] == river_score(phishing, make_model, metrics.Recall())
    # LogLoss makes progressive_val_score call predict_proba_one, and skip {} answers.
    assert c["log_loss"] == river_score(phishing, make_model, metrics.LogLoss())
    assert m.n == len(phishing)


def test_first_hoeffding_prediction_is_empty_and_skipped(phishing):
    # The tree has no class before its first label: proba {} → prediction None, which
    # progressive_val_score does not count; neither do we (except in `n`).
    model = hoeffding()
    x, _ = phishing[0]
    assert model.predict_proba_one(x) == {}
    assert model.predict_one(x) is None
    m = run_prequential(phishing, model)
    assert m.n == len(phishing)
    assert m.n_scored == m.cumulative()["n"] == len(phishing) - 1


# 2. exactness on Elec2 -----------------------------------------------------------------


def test_cumulative_equals_progressive_val_score_on_elec2():
    data = list(elec2())
    assert len(data) == 45_312
    m = run_prequential(data, logreg())
    acc, f1 = river_score(data, logreg, metrics.Accuracy() + metrics.F1())  # separate cms
    c = m.cumulative()
    assert c["accuracy"] == acc
    assert c["f1"] == f1
    assert round(c["accuracy"], 4) == 0.8373  # /work/shared/datasets/README.md


# 3. delayed labels ---------------------------------------------------------------------


def run_delayed(data, model, k):
    """Score at question time; update metrics and learn at answer time (see module doc)."""
    m = Prequential()
    pending = collections.deque()  # (i, x, y, y_pred, proba), in arrival order
    for i, (x, y) in enumerate(data):
        while pending and pending[0][0] <= i - k:
            _, xj, yj, y_pred, proba = pending.popleft()
            m.update(yj, y_pred, proba)
            model.learn_one(xj, yj)
        proba = model.predict_proba_one(x)
        pending.append((i, x, y, predict_from_proba(proba), proba))
    for _, xj, yj, y_pred, proba in pending:
        m.update(yj, y_pred, proba)
        model.learn_one(xj, yj)
    return m


@pytest.mark.parametrize("make_model", [logreg, hoeffding], ids=["logreg", "hoeffding"])
@pytest.mark.parametrize("k", [1, 50])
def test_delayed_labels_match_progressive_val_score(phishing, make_model, k):
    c = run_delayed(phishing, make_model(), k).cumulative()
    acc = river_score(phishing, make_model, metrics.Accuracy(), delay=k)
    f1 = river_score(phishing, make_model, metrics.F1(), delay=k)
    assert c["accuracy"] == acc
    assert c["f1"] == f1
    # The order matters: revealing label i-k only after scoring event i is a delay of
    # k + 1, and gives a different score.
    assert acc != river_score(phishing, make_model, metrics.Accuracy(), delay=k + 1)


def test_delay_zero_is_no_delay(phishing):
    a = run_delayed(phishing, logreg(), 0).cumulative()
    b = run_prequential(phishing, logreg()).cumulative()
    assert a == b


# 4. window, fading, multiclass, log-loss -----------------------------------------------


def scored_events(data, model):
    """(y, y_pred, proba) of a no-delay run, to feed river metrics and ours alike."""
    out = []
    for x, y in data:
        proba = model.predict_proba_one(x)
        out.append((y, predict_from_proba(proba), proba))
        model.learn_one(x, y)
    return out


@pytest.mark.parametrize("w", [1, 37, 500])
def test_window_matches_river_rolling(phishing, w):
    events = scored_events(phishing, logreg())
    m = Prequential(window=w)
    rolling = {
        "accuracy": utils.Rolling(metrics.Accuracy, window_size=w),
        "f1": utils.Rolling(metrics.F1, window_size=w),
        "precision": utils.Rolling(metrics.Precision, window_size=w),
        "recall": utils.Rolling(metrics.Recall, window_size=w),
    }
    rolling_loss = utils.Rolling(metrics.LogLoss, window_size=w)
    for y, y_pred, proba in events:
        m.update(y, y_pred, proba)
        for r in rolling.values():
            r.update(y, y_pred)
        rolling_loss.update(y, proba)
        got = m.windowed()
        assert got["n"] == min(w, m.n_scored)
        for name, r in rolling.items():
            assert got[name] == pytest.approx(r.get(), abs=1e-12)
        assert got["log_loss"] == pytest.approx(rolling_loss.get(), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.999, 0.9, 0.5])  # 0.5 rescales every ~330 events
def test_fading_matches_direct_recursion(phishing, alpha):
    events = scored_events(phishing, logreg())
    m = Prequential(fading=alpha)
    b = s_correct = s_loss = 0.0
    cells = collections.defaultdict(float)  # faded confusion matrix, all cells × α
    for y, y_pred, proba in events:
        m.update(y, y_pred, proba)
        p = min(max(proba[True], 1e-15), 1 - 1e-15)
        loss = -math.log(p) if y else -math.log(1 - p)
        b = 1 + alpha * b
        s_correct = (y == y_pred) + alpha * s_correct
        s_loss = loss + alpha * s_loss
        for key in cells:
            cells[key] *= alpha
        cells[y, y_pred] += 1.0
        tp, fp, fn = cells[True, True], cells[False, True], cells[True, False]
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        got = m.faded()
        assert got["n"] == pytest.approx(b, rel=1e-9)
        assert got["accuracy"] == pytest.approx(s_correct / b, rel=1e-9)
        assert got["log_loss"] == pytest.approx(s_loss / b, rel=1e-9)
        assert got["precision"] == pytest.approx(precision, rel=1e-9)
        assert got["recall"] == pytest.approx(recall, rel=1e-9)
        assert got["f1"] == pytest.approx(f1, rel=1e-9)


def test_fading_one_is_cumulative(phishing):
    m = Prequential(fading=1.0)
    for y, y_pred, proba in scored_events(phishing, logreg()):
        m.update(y, y_pred, proba)
    f, c = m.faded(), m.cumulative()
    assert f["n"] == c["n"]
    for name in ("accuracy", "f1", "precision", "recall"):
        assert f[name] == c[name]


def synthetic_three_classes(n=3000, seed=7):
    """String labels (random hashes, so set order depends on insertion history), with
    classes that appear late and predictions of classes absent from the truth."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        classes = ["cat", "dog"] if i < 200 else ["cat", "dog", "emu"]
        y = rng.choice(classes)
        y_pred = y if rng.random() < 0.6 else rng.choice(["cat", "dog", "emu", "yak"])
        raw = {c: rng.random() for c in ("cat", "dog", "emu")}
        raw[y_pred] = raw.get(y_pred, 0.0) + 1.0
        total = sum(raw.values())
        out.append((y, y_pred, {c: v / total for c, v in raw.items()}))
    return out


def test_macro_metrics_match_river_on_a_three_class_stream():
    m = Prequential(window=250)
    ref = {
        "f1": metrics.MacroF1(),
        "precision": metrics.MacroPrecision(),
        "recall": metrics.MacroRecall(),
        "accuracy": metrics.Accuracy(),
    }
    rolling = {
        "f1": utils.Rolling(metrics.MacroF1, window_size=250),
        "accuracy": utils.Rolling(metrics.Accuracy, window_size=250),
    }
    cross_entropy = metrics.CrossEntropy()
    for i, (y, y_pred, proba) in enumerate(synthetic_three_classes()):
        m.update(y, y_pred, proba)
        for r in (*ref.values(), *rolling.values()):
            r.update(y, y_pred)
        cross_entropy.update(y, proba)
        if i % 7 == 0 or i > 2900:  # read at irregular moments, as the engine does
            got = m.cumulative()
            # Read every river macro metric too: their reads touch their dicts like ours.
            assert got["f1"] == ref["f1"].get()
            for name, r in ref.items():
                assert got[name] == r.get(), name
            assert got["log_loss"] == cross_entropy.get()
            win = m.windowed()
            for name, r in rolling.items():
                assert win[name] == pytest.approx(r.get(), abs=1e-12), name
    assert not m.binary


def test_macro_f1_on_image_segments_equals_progressive_val_score():
    data = list(datasets.ImageSegments())[:1200]
    m = run_prequential(data, hoeffding())
    c = m.cumulative()
    assert c["f1"] == river_score(data, hoeffding, metrics.MacroF1())
    assert c["accuracy"] == river_score(data, hoeffding, metrics.Accuracy())
    assert c["log_loss"] == river_score(data, hoeffding, metrics.CrossEntropy())


def test_log_loss_matches_river_logloss(phishing):
    events = scored_events(phishing, logreg())
    m = Prequential(window=100)
    ref, rolling = metrics.LogLoss(), utils.Rolling(metrics.LogLoss, window_size=100)
    for y, y_pred, proba in events:
        m.update(y, y_pred, proba)
        ref.update(y, proba)
        rolling.update(y, proba)
    assert m.cumulative()["log_loss"] == ref.get()
    assert m.windowed()["log_loss"] == pytest.approx(rolling.get(), rel=1e-12)


@pytest.mark.parametrize("y", [True, False])
def test_a_nan_probability_costs_the_largest_loss_and_does_not_poison_the_mean(y):
    m = Prequential(window=10)
    m.update(y, True, {True: float("nan"), False: float("nan")})
    m.update(True, True, {True: 0.9, False: 0.1})
    worst, good = -math.log(1e-15), -math.log(0.9)
    for view in (m.cumulative(), m.windowed()):
        assert view["log_loss"] == pytest.approx((worst + good) / 2, rel=1e-4)  # 1 - _P_MAX is not 1e-15


def test_binary_until_a_non_bool_label_appears():
    m = Prequential()
    m.update(True, True, {True: 0.9, False: 0.1})
    m.update(False, True, {True: 0.7, False: 0.3})
    assert m.binary
    f1 = metrics.F1()
    f1.update(True, True)
    f1.update(False, True)
    assert m.cumulative()["f1"] == f1.get()
    m.update("maybe", True, {True: 0.5, False: 0.5})
    assert not m.binary
    macro = metrics.MacroF1()
    for yt, yp in [(True, True), (False, True), ("maybe", True)]:
        macro.update(yt, yp)
    assert m.cumulative()["f1"] == macro.get()


def test_labels_1_and_true_give_the_same_metrics_whenever_they_are_read():
    """A Counter merges (1, True) into (True, True): the type check must not see the
    merged keys only, or the views would depend on when a read folded the events."""
    events = [(True, True)] * 3 + [(1, True)] + [(False, True)] * 3
    unread, read = Prequential(), Prequential()
    for i, (y, p) in enumerate(events):
        for m in (unread, read):
            m.update(y, p, {True: 0.7, False: 0.3})
        if i == 2:
            read.cumulative()  # a status report between two events folds what came so far
    assert unread.cumulative() == read.cumulative() and unread.binary == read.binary is False


def test_missing_prediction_or_proba():
    m = Prequential()
    m.update(True, None, {})  # no prediction: only counted in n
    m.update(True, None, None)
    assert m.n == 2 and m.n_scored == 0
    assert m.cumulative() == {
        "n": 0,
        "accuracy": 0.0,
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "log_loss": 0.0,
    }
    m.update(True, True, None)  # a prediction without proba: no log-loss
    c = m.cumulative()
    assert c["n"] == 1 and c["accuracy"] == 1.0 and c["log_loss"] == 0.0
    m.update(True, True, {True: 0.5, False: 0.5})
    assert m.cumulative()["log_loss"] == -math.log(0.5)
    assert m.windowed()["log_loss"] == -math.log(0.5)
    assert m.faded()["log_loss"] == pytest.approx(-math.log(0.5))


def test_predict_from_proba_is_rivers_predict_one(phishing):
    assert predict_from_proba(None) is None
    assert predict_from_proba({}) is None
    assert predict_from_proba({"b": 0.5, "a": 0.5}) == "b"  # first of the ties
    model = logreg()
    for x, y in phishing[:300]:
        assert predict_from_proba(model.predict_proba_one(x)) == model.predict_one(x)
        model.learn_one(x, y)


@pytest.mark.parametrize(
    "kwargs", [{"window": 0}, {"window": 2.5}, {"window": True}, {"fading": 0.0}, {"fading": 1.5}]
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ConfigError):
        Prequential(**kwargs)


# 5. pickling ---------------------------------------------------------------------------


@pytest.mark.parametrize("events", ["binary", "multiclass"])
def test_pickle_round_trip_gives_same_values_and_future(phishing, events):
    stream_ = (
        scored_events(phishing, logreg()) if events == "binary" else synthetic_three_classes(n=1200, seed=3)
    )
    head, tail = stream_[:700], stream_[700:]
    m = Prequential(window=100, fading=0.9)
    for e in head:
        m.update(*e)
    copy = pickle.loads(pickle.dumps(m))
    assert copy.report() == m.report()
    assert (copy.n, copy.n_scored, copy.binary) == (m.n, m.n_scored, m.binary)
    for e in tail:
        m.update(*e)
        copy.update(*e)
        assert copy.report() == m.report()
