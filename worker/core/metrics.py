"""Prequential metrics of one model (or one served arm), O(1) work per labelled event.

The engine (ARCHITECTURE.md §3) updates these once per labelled event with the
prediction it stored when the event was scored. River metric objects are not used per
event: each would keep its own confusion matrix and cost a few µs. Instead one
:class:`Prequential` keeps plain counters (a confusion matrix per view, loss sums) for
three views, and derives the metric values only when they are read:

- ``cumulative``: every scored event since creation;
- ``window``: the last ``window`` scored events (a bounded deque of (truth, prediction)
  pairs and losses, counted when read: O(window) per read instead of per event);
- ``fading``: Gama, Sebastião & Rodrigues (2013), ``S_i = L_i + α S_{i-1}``,
  ``B_i = 1 + α B_{i-1}``, applied to every confusion-matrix cell and to the log-loss.
  Multiplying every cell by α per event would be O(classes²), so the cells are stored
  divided by α^i instead: event i is added with weight ``α^-i`` and the values are read
  as ratios, in which the common factor cancels. The stored values are rescaled (O(cells))
  once the weight passes 1e100, i.e. every ~230k events for α = 0.999.

:meth:`Prequential.update` only appends the event to a short list; every 256 events (and
before any read) the list is folded into the three views: the cumulative cells are
counted by ``collections.Counter`` in C, the losses and the fading cells in one Python
pass. This is what keeps the metrics of three models to ~1 µs per event.

Exactness. The cumulative view reproduces river's own arithmetic (``metrics.Accuracy``,
``F1``/``Precision``/``Recall``, ``MacroF1``/``MacroPrecision``/``MacroRecall``,
``LogLoss``/``CrossEntropy``: same expressions, same order of operations, same
zero-division conventions), so for one model and a stream it gives the very same float
as ``river.evaluate.progressive_val_score`` (tests/unit/test_metrics.py asserts ``==``).

- Binary vs multiclass: while every label seen (true and predicted) is a ``bool``, the
  task is binary and f1/precision/recall are river's binary metrics with positive class
  ``True`` (river's default ``pos_val=True``). Otherwise they are macro averages over the
  classes seen in the view. The switch is decided when read, from the same counters.
  (Integer labels 0/1 are multiclass here, and as dict keys ``1 == True`` are one
  class, exactly as in river's confusion matrix.)
- No prediction: ``progressive_val_score`` skips the metric update when the prediction
  is ``None`` or ``{}`` (e.g. ``HoeffdingTreeClassifier`` before its first label, whose
  ``predict_proba_one`` is ``{}`` and ``predict_one`` is ``None``). So does
  :meth:`Prequential.update` when ``y_pred is None``: the event only counts in
  :attr:`Prequential.n`, not in any view.
- Log-loss needs a non-empty ``proba``; an event with a prediction but no ``proba``
  counts in accuracy/f1 and not in log-loss. While the stream is binary the loss is
  river's ``LogLoss`` (``p = clamp(proba.get(True, 0.0))``, ``-log(p)`` or
  ``-log(1 - p)``), else river's ``CrossEntropy`` (``-log(clamp(proba[y_true]))``,
  and 0.0 — river's convention — when ``y_true`` is not a key of ``proba``). The
  cumulative mean is updated like river's ``stats.Mean``, so it is exact too.
- Macro averages iterate over river's class set (``{rows ≠ 0} | {columns ≠ 0}``) built
  the same way from dicts with the same insertion order, and reading them touches the
  row and column dicts as river's ``MacroF1.get`` does (absent classes get a 0 entry);
  the float sum therefore matches a river macro metric read at the same moments.

The window and fading views use the same formulas on their own counters; they are
checked against ``utils.Rolling`` and a direct computation of S/B to ~1e-12.

>>> from worker.core.metrics import Prequential, predict_from_proba
>>> m = Prequential(window=2, fading=0.5)
>>> stream = [(True, {True: 0.8, False: 0.2}), (False, {True: 0.6, False: 0.4}),
...           (True, {True: 0.9, False: 0.1}), (False, {})]
>>> for y, proba in stream:
...     m.update(y, predict_from_proba(proba), proba)
>>> m.n, m.n_scored  # the last event had no prediction: not scored
(4, 3)
>>> c = m.cumulative()
>>> c["n"], round(c["accuracy"], 4), c["precision"], c["recall"], c["f1"]
(3, 0.6667, 0.6666666666666666, 1.0, 0.8)
>>> w = m.windowed()
>>> w["n"], w["accuracy"]  # the last 2 scored events
(2, 0.5)
>>> f = m.faded()
>>> f["n"], round(f["accuracy"], 4)  # B = 1 + .5 + .25; S = 1 + 0 + .25
(1.75, 0.7143)
>>> sorted(m.report())
['cumulative', 'fading', 'window']

"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Hashable, Mapping
from typing import Any

from worker.errors import ConfigError

__all__ = ["FrozenMetrics", "Prequential", "predict_from_proba"]

# river.metrics.base.ClassificationMetric._clamp_proba bounds.
_P_MIN = 1e-15
_P_MAX = 1 - 1e-15
# Rescale the fading view's stored values once the per-event weight α^-i exceeds this.
_RESCALE_AT = 1e100
# Scored events kept by Prequential.update before they are folded into the views.
_FOLD_EVERY = 256
# beta**2 for F1, as river's FBeta(beta=1.0) computes it.
_B2 = 1.0**2
_log = math.log


def predict_from_proba(proba: Mapping[Hashable, float] | None) -> Hashable | None:
    """The label river's ``Classifier.predict_one`` returns for this ``predict_proba_one``.

    ``max(proba, key=proba.get)`` if ``proba`` else ``None``: ties go to the first key in
    ``proba``'s order. Computing the prediction from the probabilities (instead of
    calling ``predict_one`` too) halves the model work per event and gives the same
    label for every river classifier that does not override ``predict_one``.

    >>> predict_from_proba({False: 0.5, True: 0.5}), predict_from_proba({})
    (False, None)
    """
    if proba:
        return max(proba, key=proba.get)  # type: ignore[arg-type]
    return None


def _losses(scored: list[tuple[Any, Any, Any]], binary: bool) -> list[float | None]:
    """Per-event log-losses of (truth, prediction, proba) triples: river's ``LogLoss``
    while the stream is binary, else its ``CrossEntropy``; None without a ``proba``."""
    out: list[float | None] = []
    append = out.append
    for y_true, _, proba in scored:
        if not proba:
            append(None)
            continue
        if binary:
            p = proba.get(True, 0.0)
            if p > _P_MAX:  # max(min(p, _P_MAX), _P_MIN), without the calls
                p = _P_MAX
            elif not p >= _P_MIN:  # NaN too (one would make every later mean NaN): the worst loss
                p = _P_MIN if p == p or y_true else _P_MAX
            append(-_log(p) if y_true else -_log(1 - p))
        else:
            p = proba.get(y_true)
            if p is None:
                append(0.0)  # river's convention when y_true is not a key of proba
                continue
            if p > _P_MAX:
                p = _P_MAX
            elif not p >= _P_MIN:
                p = _P_MIN
            append(-_log(p))
    return out


class _Confusion:
    """A confusion matrix with river's layout (rows = truth, columns = prediction).

    Plain dicts instead of river's defaultdicts so that it pickles without a factory and
    reads do not create entries, except where river's reads do (see :meth:`values`).
    """

    def __init__(self) -> None:
        self.data: dict[Any, dict[Any, float]] = {}
        self.sum_row: dict[Any, float] = {}
        self.sum_col: dict[Any, float] = {}
        self.total_weight = 0.0
        self.total_true_positives = 0.0

    @classmethod
    def of(cls, cells: Mapping[tuple[Any, Any], float]) -> _Confusion:
        """The matrix with these (truth, prediction) → weight cells, in their order."""
        cm = cls()
        for (y_true, y_pred), w in cells.items():
            cm.update(y_true, y_pred, float(w))
        return cm

    def update(self, y_true: Any, y_pred: Any, w: float) -> None:
        # Same operations as river's ConfusionMatrix.update.
        row = self.data.get(y_true)
        if row is None:
            row = self.data[y_true] = {}
        row[y_pred] = row.get(y_pred, 0.0) + w
        self.total_weight += w
        self.sum_row[y_true] = self.sum_row.get(y_true, 0.0) + w
        self.sum_col[y_pred] = self.sum_col.get(y_pred, 0.0) + w
        if y_true == y_pred:
            self.total_true_positives += w

    def values(self, binary: bool) -> tuple[float, float, float, float]:
        """(accuracy, f1, precision, recall) with river's formulas.

        Scale-free: multiplying every weight by the same factor gives the same values
        (up to rounding), which the fading view relies on.
        """
        try:
            accuracy = self.total_true_positives / self.total_weight
        except ZeroDivisionError:
            accuracy = 0.0
        if binary:
            return (accuracy, *self._binary())
        return (accuracy, *self._macro())

    def _binary(self) -> tuple[float, float, float]:
        # river.metrics.Precision / Recall / FBeta(beta=1) with pos_val=True.
        row = self.data.get(True)
        tp = row.get(True, 0.0) if row is not None else 0.0
        fp = self.sum_col.get(True, 0.0) - tp
        fn = self.sum_row.get(True, 0.0) - tp
        try:
            p = tp / (tp + fp)
        except ZeroDivisionError:
            p = 0.0
        try:
            r = tp / (tp + fn)
        except ZeroDivisionError:
            r = 0.0
        try:
            f1 = (1 + _B2) * p * r / (_B2 * p + r)
        except ZeroDivisionError:
            f1 = 0.0
        return f1, p, r

    def _macro(self) -> tuple[float, float, float]:
        # river.metrics.MacroF1 / MacroPrecision / MacroRecall. The class list is built
        # exactly like ConfusionMatrix.classes so the float sums run in the same order.
        data, sum_row, sum_col = self.data, self.sum_row, self.sum_col
        classes = list({c for c, n in sum_row.items() if n} | {c for c, n in sum_col.items() if n})
        total_f1 = total_p = total_r = 0
        for c in classes:
            # river's defaultdict reads insert the missing row/column entries (as 0);
            # doing the same keeps later class sets in river's insertion order.
            col = sum_col.setdefault(c, 0.0)
            rsum = sum_row.setdefault(c, 0.0)
            row = data.get(c)
            tp = row.get(c, 0.0) if row is not None else 0.0
            # MacroFBeta
            try:
                p = tp / col
            except ZeroDivisionError:
                p = 0
            try:
                r = tp / rsum
            except ZeroDivisionError:
                r = 0
            try:  # noqa: SIM105 - same control flow as river
                total_f1 += (1 + _B2) * p * r / (_B2 * p + r)
            except ZeroDivisionError:
                pass
            # MacroPrecision: tp / (tp + fp)
            fp = col - tp
            try:  # noqa: SIM105
                total_p += tp / (tp + fp)
            except ZeroDivisionError:
                pass
            # MacroRecall
            try:  # noqa: SIM105
                total_r += tp / rsum
            except ZeroDivisionError:
                pass
        k = len(classes)
        if k == 0:
            return 0.0, 0.0, 0.0
        return total_f1 / k, total_p / k, total_r / k


class Prequential:
    """Cumulative, sliding-window and fading-factor metrics of one model.

    Parameters
    ----------
    window
        Number of most recent *scored* events in the window view (river's
        ``utils.Rolling(..., window_size=window)`` over the same updates).
    fading
        Fading factor α in (0, 1] of the fading view; 1 means no fading.

    Call :meth:`update` once per labelled event, with the prediction and probabilities
    stored when the event was scored (not recomputed at label time). Picklable (plain
    attributes) and deterministic, so the engine can snapshot and replay it.
    :meth:`freeze` keeps only the values, once no update will come.
    """

    frozen = False  # see FrozenMetrics

    def __init__(self, window: int = 1000, fading: float = 0.999) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"metrics window must be an integer >= 1, got {window!r}")
        if not isinstance(fading, int | float) or not 0.0 < fading <= 1.0:
            raise ConfigError(f"metrics fading factor must be in (0, 1], got {fading!r}")
        self.window = window
        self.fading = float(fading)
        self._n = 0  # labelled events, scored or not
        self._todo: list[tuple[Any, Any, Any]] = []  # scored events not folded in yet
        self._binary = True  # every label seen so far is a bool
        # cumulative
        self._c_cm = _Confusion()
        self._c_cm_n = 0  # scored events
        self._c_loss_n = 0.0  # river stats.Mean state
        self._c_loss_mean = 0.0
        # window: the last `window` scored events, counted when read
        self._w_pairs: deque[tuple[Any, Any]] = deque(maxlen=window)
        self._w_losses: deque[float | None] = deque(maxlen=window)
        # fading: stored cell values = faded values * _f_inc, where _f_inc = α^-i is the
        # weight given to the latest event i (so the latest event has faded weight 1).
        self._f_cells: dict[tuple[Any, Any], float] = {}
        self._f_inc = self.fading  # the first event is divided by α: weight 1.0
        self._f_loss_sum = 0.0
        self._f_loss_w = 0.0

    @property
    def n(self) -> int:
        """Labelled events given to :meth:`update`, including those without a prediction."""
        return self._n

    @property
    def n_scored(self) -> int:
        """Labelled events that had a prediction, i.e. that the cumulative view counts."""
        return self._c_cm_n + len(self._todo)

    @property
    def binary(self) -> bool:
        """True while every label seen (true and predicted) is a ``bool``."""
        self._fold()
        return self._binary

    def update(
        self, y_true: Hashable, y_pred: Hashable | None, proba: Mapping[Hashable, float] | None
    ) -> None:
        """Account for one labelled event.

        ``y_pred`` is what the model predicted when the event was scored (river's
        ``predict_one``, e.g. :func:`predict_from_proba` of ``proba``); ``proba`` is its
        ``predict_proba_one`` then, or ``None``. With ``y_pred is None`` the event only
        counts in :attr:`n`, as ``progressive_val_score`` skips such predictions.
        """
        self._n += 1
        if y_pred is not None:
            todo = self._todo
            todo.append((y_true, y_pred, proba))
            if len(todo) >= _FOLD_EVERY:
                self._fold()

    def _fold(self) -> None:
        """Add the events kept by :meth:`update` to the three views, in their order.

        The result does not depend on when folds happen: the cumulative cells are whole
        numbers (exact in any grouping), and the losses, the log-loss mean and the fading
        cells are computed event by event in order, as :meth:`update` would.
        """
        todo = self._todo
        if not todo:
            return
        self._todo = []
        pairs = [(t, p) for t, p, _ in todo]
        counts = Counter(pairs)  # C-level; first-appearance order, as river inserts
        # types read from every pair, not from the counted keys: a Counter merges (1, True)
        # into (True, True), and whether it did would depend on when the fold happened
        if self._binary and not all(type(t) is bool and type(p) is bool for t, p in pairs):
            losses = self._losses_until_multiclass(todo)
        else:
            losses = _losses(todo, self._binary)
        cm = self._c_cm
        for (t, p), k in counts.items():
            cm.update(t, p, float(k))  # whole numbers: the same floats as k updates by 1.0
        self._c_cm_n += len(pairs)
        self._w_pairs.extend(pairs)
        self._w_losses.extend(losses)

        n, mean = self._c_loss_n, self._c_loss_mean
        alpha, inc, cells = self.fading, self._f_inc, self._f_cells
        loss_sum, loss_w = self._f_loss_sum, self._f_loss_w
        for pair, loss in zip(pairs, losses, strict=True):
            inc /= alpha
            cells[pair] = cells.get(pair, 0.0) + inc
            if loss is not None:
                n += 1.0
                mean += (1.0 / n) * (loss - mean)  # river's stats.Mean
                loss_sum += inc * loss
                loss_w += inc
            if inc > _RESCALE_AT:
                for key in cells:
                    cells[key] /= inc
                loss_sum /= inc
                loss_w /= inc
                inc = 1.0
        self._c_loss_n, self._c_loss_mean = n, mean
        self._f_inc, self._f_loss_sum, self._f_loss_w = inc, loss_sum, loss_w

    def _losses_until_multiclass(self, todo: list[tuple[Any, Any, Any]]) -> list[float | None]:
        """The losses of a fold in which the first non-bool label appears: LogLoss before
        it, CrossEntropy from it on."""
        for i, (t, p, _) in enumerate(todo):
            if type(t) is not bool or type(p) is not bool:
                self._binary = False
                return _losses(todo[:i], True) + _losses(todo[i:], False)
        raise AssertionError("unreachable: the caller saw a non-bool label")

    def cumulative(self) -> dict[str, float]:
        """Metrics over every scored event: the same floats as river's progressive score."""
        self._fold()
        acc, f1, p, r = self._c_cm.values(self._binary)
        return {
            "n": self._c_cm_n,
            "accuracy": acc,
            "f1": f1,
            "precision": p,
            "recall": r,
            "log_loss": self._c_loss_mean,
        }

    def windowed(self) -> dict[str, float]:
        """Metrics over the last ``window`` scored events."""
        self._fold()
        acc, f1, p, r = _Confusion.of(Counter(self._w_pairs)).values(self._binary)
        losses = [loss for loss in self._w_losses if loss is not None]
        return {
            "n": len(self._w_pairs),
            "accuracy": acc,
            "f1": f1,
            "precision": p,
            "recall": r,
            "log_loss": math.fsum(losses) / len(losses) if losses else 0.0,
        }

    def faded(self) -> dict[str, float]:
        """Fading-factor metrics; ``n`` is the faded count ``B_i = Σ α^(i-j)`` (a float)."""
        self._fold()
        cm = _Confusion.of(self._f_cells)
        acc, f1, p, r = cm.values(self._binary)
        return {
            "n": cm.total_weight / self._f_inc,
            "accuracy": acc,
            "f1": f1,
            "precision": p,
            "recall": r,
            "log_loss": self._f_loss_sum / self._f_loss_w if self._f_loss_w else 0.0,
        }

    def report(self) -> dict[str, dict[str, float]]:
        """All three views, keyed ``cumulative``, ``window`` and ``fading``."""
        return {"cumulative": self.cumulative(), "window": self.windowed(), "fading": self.faded()}

    def freeze(self) -> FrozenMetrics:
        """The values of the three views now, without the counters: see :class:`FrozenMetrics`."""
        return FrozenMetrics(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_w_events" in state:  # pickled by worker 0.1.0 (e8d67cf): counters kept per event
            events = state.pop("_w_events")
            state["_w_pairs"] = deque(((t, p) for t, p, _ in events), maxlen=state["window"])
            state["_w_losses"] = deque((loss for _, _, loss in events), maxlen=state["window"])
            faded = state.pop("_f_cm")
            state["_f_cells"] = {(t, p): w for t, row in faded.data.items() for p, w in row.items()}
            for name in ("_w_cm", "_w_loss_sum", "_w_loss_n", "_w_loss_reverts"):
                del state[name]
            state["_todo"] = []
        self.__dict__.update(state)

    def __repr__(self) -> str:
        c = self.cumulative()
        return (
            f"Prequential(n={self._n}, scored={c['n']}, accuracy={c['accuracy']:.4f}, "
            f"f1={c['f1']:.4f}, window={self.window}, fading={self.fading})"
        )


class FrozenMetrics:
    """The final values of a :class:`Prequential` that will not be updated again.

    The engine freezes a version's metrics when the version's model is dropped (a
    discarded challenger, a former champion no longer retained): a live ``Prequential``
    holds a confusion matrix per view and the window's last ``window`` events (~85 KB at
    the default 1000), a frozen one only the three views' values (~2 KB), so the memory
    of a long run does not grow with every version it ever created. It answers the same
    reads (:attr:`n`, :attr:`n_scored`, :attr:`binary`, :meth:`cumulative`,
    :meth:`windowed`, :meth:`faded`, :meth:`report`) with the values they had when it was
    frozen, and has no ``update``.

    >>> m = Prequential(window=10)
    >>> m.update(True, True, {True: 0.9, False: 0.1})
    >>> frozen = m.freeze()
    >>> frozen.report() == m.report(), frozen.n, frozen.frozen, m.frozen
    (True, 1, True, False)
    """

    frozen = True

    def __init__(self, metrics: Prequential) -> None:
        self.window = metrics.window
        self.fading = metrics.fading
        self._n = metrics.n
        self._n_scored = metrics.n_scored
        self._binary = metrics.binary
        self._report = metrics.report()

    @property
    def n(self) -> int:
        return self._n

    @property
    def n_scored(self) -> int:
        return self._n_scored

    @property
    def binary(self) -> bool:
        return self._binary

    def cumulative(self) -> dict[str, float]:
        return dict(self._report["cumulative"])

    def windowed(self) -> dict[str, float]:
        return dict(self._report["window"])

    def faded(self) -> dict[str, float]:
        return dict(self._report["fading"])

    def report(self) -> dict[str, dict[str, float]]:
        return {view: dict(values) for view, values in self._report.items()}

    def freeze(self) -> FrozenMetrics:
        return self

    def __repr__(self) -> str:
        c = self._report["cumulative"]
        return (
            f"FrozenMetrics(n={self._n}, scored={c['n']}, accuracy={c['accuracy']:.4f}, "
            f"f1={c['f1']:.4f}, window={self.window}, fading={self.fading})"
        )
