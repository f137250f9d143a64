"""The champion/challenger engine: pure Python over river, driven by plain objects.

The Kafka worker and ``worker replay`` both drive this one class (ARCHITECTURE.md §3):

- :meth:`Engine.process` scores an event with the champion (served), the challenger
  (shadow) and, during probation, the previous champion; with a label (inline, or one
  that arrived early) it evaluates and trains at once, else the features wait in a
  bounded pending buffer for :meth:`Engine.process_label`;
- :meth:`Engine.apply` applies a control command (an operator's or the engine's own);
- the engine's own decisions are applied where they are taken and also queued as
  commands (:meth:`Engine.take_decisions`) that the driver writes to the control log,
  followed by the lifecycle events they caused; reading them back is a no-op (commands
  are idempotent by ``command_id``). Applying at once, rather than when read back,
  makes a decision's effect a function of the input order alone, not of commit timing:
  two runs over the same input agree exactly, and a restart replays to the same state.
- lifecycle events (:meth:`Engine.take_lifecycle`) say what happened, in order.

The engine reads no clock and no randomness of its own: for a given input order it is
deterministic, so a snapshot plus a replay of the input since then rebuilds the state
of an uninterrupted run exactly (ARCHITECTURE.md §4).

>>> from worker.core.engine import Engine
>>> from worker.core.config import EngineConfig
>>> from worker.core.types import Event
>>> engine = Engine(EngineConfig(warmup_labels=2))
>>> for i in range(3):
...     p = engine.process(Event(id=f"e{i}", features={"x": float(i)}, label=i % 2 == 0))
>>> p.served_by, p.model_version, p.shadow["model_version"]
('champion', 1, 2)
>>> [e.type for e in engine.take_lifecycle()]
['challenger_created']
"""

from __future__ import annotations

import copy
import io
import logging
import pickle
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from worker.core import state
from worker.core.config import EngineConfig
from worker.core.detector import ErrorDetector
from worker.core.metrics import Prequential
from worker.core.modelspec import parse_detector, parse_model
from worker.core.observer import Observer
from worker.core.pending import PendingBuffer
from worker.core.policy import Verdict, decide_promotion, decide_rollback, should_reset_on_drift
from worker.core.registry import ModelVersion, Registry
from worker.core.split import serves_challenger
from worker.core.types import COMMAND_TYPES, Command, Event, Label, LifecycleEvent, Prediction
from worker.errors import CommandRejected, DuplicateIdError, RefusedInputError, SnapshotError

log = logging.getLogger(__name__)

_REMEMBERED_COMMANDS = 100_000  # command ids kept for idempotency
_REMEMBERED_EXPIRED = 10_000  # ids of evicted predictions kept to tell a late label from an unknown one
DECISION_ISSUER, DECISION_PREFIX = "worker", "auto-"  # the engine's own decisions (_decide)


def is_own_decision(command: Command) -> bool:
    """Whether ``command`` is a decision the engine took itself (and wrote to control).

    Read back from control it is a record, not an order: the engine applied it when it
    took it. One this engine has not applied was taken by an earlier run from a state it
    was restored past (an at-least-once restart resumes from its last snapshot), about
    models that, under these numbers, are not the ones it names; the restored engine
    decides again instead.

    >>> is_own_decision(Command(type="promote", command_id="auto-promote-v1-to-v2-at-9", issued_by="worker"))
    True
    >>> is_own_decision(Command(type="promote", command_id="auto-1", issued_by="alice"))
    False
    """
    return command.issued_by == DECISION_ISSUER and command.command_id.startswith(DECISION_PREFIX)


# The hot path keeps plain tuples (no per-event objects):
#   a score  = (version, prediction, proba) of one model for one event;
#   a scored = (features, served_by, champion score, challenger score | None,
#               previous-champion score | None), kept until the event's label.


class Engine:
    """One champion, one challenger, their metrics, drift detectors and policy.

    Per-version metrics (``registry[v].metrics``) cover the labelled events a version
    scored as champion or challenger. The previous champion, scored in shadow during the
    probation after a promotion, feeds only the probation test: its metrics stay as they
    were when it was champion (labels that arrive late for events it scored as champion
    still count). They are live while the version's model is retained (in a role, or
    kept for a rollback: at most ``retain_versions`` of those); once the model is dropped
    (a discarded challenger, a former champion pushed out of retention) they are frozen
    into a small summary (:class:`~worker.core.metrics.FrozenMetrics`) that reads the
    same, and a label that arrives later for an event that version scored is not
    counted in them (the served metrics and the counts still see it).
    """

    learn_error: str | None = None  # the last time a model could not learn (a class default:
    # snapshots of earlier releases do not have it)
    shadow_error: str | None = None  # the last time the challenger or previous champion raised

    def __init__(self, config: EngineConfig, observer: Observer | None = None) -> None:
        self.config = config
        self.observer = observer or Observer()
        # Where a dropped former champion's model can be read back (version → model, or
        # None when it was never published): the worker's reader of the `models` topic.
        self.model_source: Callable[[int], Any] | None = None
        self.registry = Registry(retain=config.retain_versions)
        self.served = Prequential(config.window, config.fading)
        self.arms: dict[str, Prequential] | None = None  # per served arm, once a split is set
        self.pending = PendingBuffer(config.pending_max, config.pending_ttl)  # awaiting labels
        self.early = PendingBuffer(config.pending_max, config.pending_ttl)  # awaiting events
        self._expired: OrderedDict[str, None] = OrderedDict()  # predictions evicted last, by id
        self.late_labels = 0  # labels that came after their prediction was evicted: dropped
        self.counts = dict.fromkeys(
            ("events", "labelled", "bad", "undecodable", "learn_errors", "shadow_errors", "promotions",
             "rollbacks", "resets"),
            0,
        )
        self.positions: dict[tuple[str, int], int] = {}  # last input offset per topic-partition
        self.learning = True
        self.split = 0.0
        self.snapshot_requested = False
        self.test = None  # champion (incumbent) vs challenger (candidate)
        self.probation = None  # new champion (incumbent) vs previous champion (candidate)
        self.confirmation = None  # the same pairs the other way round: ends the probation early
        self.champion_history: list[int] = []
        self._ts: float | None = None  # the last event time (lifecycle events carry it)
        self._prev_ts: float | None = None  # the one before: the pending buffers age by the earlier
        self._classes: set[Any] = set()  # the distinct labels seen (max_classes)
        self._challenger_born = 0  # labelled count at the challenger's creation
        self._promoted_at = 0
        self._transition_at = 0
        self._alarm_at = -(10**12)  # labelled count of the challenger's last worsening alarm
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._decisions: list[Command] = []
        self._lifecycle: list[LifecycleEvent] = []
        self._warm = False
        self._chal: ModelVersion | None = None
        self._prev: ModelVersion | None = None
        self._champ = self._create(config.champion, parse_model(config.champion), None, "initial champion")
        self._take_role(self._champ, "champion")

    # --- the data path -------------------------------------------------------------------

    def process(self, event: Event) -> Prediction:
        """Score one event; learn from it when its label is known. Raises
        :class:`~worker.errors.RefusedInputError` (counted) when a model raises on it or its id is pending."""
        x = event.features
        if event.label is not None and event.label not in self._classes:
            self._check_class(event.label)
        champ, chal, prev = self._champ, self._chal, self._prev
        # (version, prediction, proba) per model, as plain tuples (see the top); the
        # prediction is predict_from_proba(proba), inlined (this runs 2-3 times per event).
        try:
            proba = champ.model.predict_proba_one(x)
        except Exception as e:  # noqa: BLE001 - the champion's error makes this event bad, not the worker
            raise self._bad(f"model raised {type(e).__name__}: {e}") from e
        c = (champ.version, max(proba, key=proba.get) if proba else None, proba)
        # The others only shadow the champion: one that raises is counted, and the event is
        # served and scored without it (a challenger spec that fails on every event would
        # otherwise dead-letter them all, serving nothing).
        h = p = None
        if chal is not None:
            try:
                proba = chal.model.predict_proba_one(x)
                h = (chal.version, max(proba, key=proba.get) if proba else None, proba)
            except Exception as e:  # noqa: BLE001 - see above
                self._shadow_failed(chal, e)
        if prev is not None:
            try:
                proba = prev.model.predict_proba_one(x)
                p = (prev.version, max(proba, key=proba.get) if proba else None, proba)
            except Exception as e:  # noqa: BLE001 - see above
                self._shadow_failed(prev, e)
        served, shadow, served_by = c, h, "champion"
        if self.split and h is not None and serves_challenger(event.key, self.split, event.id):
            served, shadow, served_by = h, c, "challenger"
        scored = (x, served_by, c, h, p)

        counts = self.counts
        label = event.label
        pending, early_labels = self.pending, self.early
        # The buffers are only touched when there is something to keep or to expire
        # (with inline labels, never). `now` is taken before this event is counted.
        busy = label is None or pending._entries or early_labels._entries
        if event.ts is not None:
            self._advance(event.ts)
        if busy:
            now = self._clock()
        early = None
        if label is None:
            early = early_labels.pop(event.id) if early_labels._entries else None
            if early is None:
                if pending._entries:  # what expired first: a full buffer then evicts the live ones only
                    self._evicted("predictions", "age", pending.expire(now))
                try:  # dated by its own event time: the clock may lag one message behind
                    stamp = now if event.ts is None else event.ts
                    self._evicted("predictions", "capacity", pending.put(event.id, scored, stamp))
                except DuplicateIdError as e:
                    raise self._bad(str(e)) from e
        elif busy:  # labelled inline: as refused if its id is pending, and a label that came
            try:    # first for it is a second label, dropped (else it would join a later copy)
                pending.refuse_pending(event.id)
            except DuplicateIdError as e:
                raise self._bad(str(e)) from e
            early_labels.discard(event.id)
        counts["events"] += 1
        if event.position is not None:
            topic, partition, offset = event.position
            self.positions[topic, partition] = offset
        if busy:
            if pending._entries:
                self._evicted("predictions", "age", pending.expire(now))
            if early_labels._entries:
                self._evicted("labels", "age", early_labels.expire(now))
        self.observer.event_scored(served_by)
        if label is not None:
            self._learn(scored, label)
        elif early is not None:
            self.observer.label_joined()
            self._learn(scored, early.label)

        # positional (a third cheaper than keywords): id, served_by, model_version,
        # prediction, proba, ts, key, shadow
        return Prediction(
            event.id, served_by, served[0], served[1], served[2], event.ts, event.key,
            None if shadow is None else {"model_version": shadow[0], "prediction": shadow[1]},
        )

    def process_label(self, label: Label) -> None:
        """Join a delayed label with its pending event, or keep it until the event comes."""
        if label.label not in self._classes:
            self._check_class(label.label)
        if label.ts is not None:
            self._advance(label.ts)
        if label.position is not None:
            topic, partition, offset = label.position
            self.positions[topic, partition] = offset
        scored = self.pending.pop(label.id)
        if scored is None:
            if label.id in self._expired:  # too late: its event's features are gone
                del self._expired[label.id]
                self.late_labels += 1
                self.observer.pending_evicted("labels", "late", 1)
                return
            try:
                stamp = self._clock() if label.ts is None else label.ts
                self._evicted("labels", "capacity", self.early.put(label.id, label, stamp))
                self._classes.add(label.label)
            except DuplicateIdError as e:
                raise self._bad(f"label: {e}") from e
            return
        self.observer.label_joined()
        self._learn(scored, label.label)

    def _check_class(self, y: Any) -> None:
        """Refuse a label not seen before when there are ``max_classes`` already (a
        continuous target, or an id sent as the label, would make every model and metric
        grow with each event, and the status slow to compute). A label is counted once
        it is learned or kept waiting, not when its message is refused for another reason."""
        if len(self._classes) >= self.config.max_classes:
            raise self._bad(f"label {str(y)[:50]!r} would be distinct label number {len(self._classes) + 1}, "
                            f"over max_classes ({self.config.max_classes}): is it a class?")

    def _advance(self, ts: float) -> None:
        """Take a message's event time (see :meth:`_clock`)."""
        if self._ts is None:  # the first event time: what waits was dated by event counts
            self.pending.restamp(ts)
            self.early.restamp(ts)
            self._prev_ts = ts
        else:
            self._prev_ts = self._ts
        self._ts = ts

    def _clock(self) -> float:
        """The pending buffers' clock: the earlier of the last two event times; before any,
        the number of events. One message dated far ahead would expire everything that
        waits, had the clock taken it alone (the labels on their way would join nothing);
        untimed messages take the clock as it stands, since a stream that mixes timed and
        untimed ones would otherwise compare event counts with epoch seconds."""
        ts, prev = self._ts, self._prev_ts
        if ts is None:
            return float(self.counts["events"])
        return ts if ts < prev else prev

    def _learn(self, scored: tuple, y: Any) -> None:
        """Test-then-train on one labelled event (a scored tuple), then consult
        the policy."""
        counts = self.counts
        counts["labelled"] += 1
        self._classes.add(y)
        x, served_by, c, h, p = scored
        # 0/1 losses (policy.zero_one_loss, inlined): a missing prediction counts as wrong
        loss_c = 0 if c[1] is not None and c[1] == y else 1
        champ = self._champ
        self._evaluate(champ if c[0] == champ.version else self.registry[c[0]], c, y, loss_c)
        if h is not None:
            loss_h = 0 if h[1] is not None and h[1] == y else 1
            chal = self._chal
            self._evaluate(chal if chal is not None and h[0] == chal.version else self.registry[h[0]],
                           h, y, loss_h)
        served = c if served_by == "champion" else h
        self.served.update(y, served[1], served[2])
        if self.arms is not None and self.split:  # A/B: only while a split divides the traffic
            self.arms[served_by].update(y, served[1], served[2])
        # re-read: a drift alarm above may have replaced the challenger
        champ, chal, prev = self._champ, self._chal, self._prev
        # the test pairs only events scored by the current champion and challenger
        if self.test is not None and h is not None and c[0] == champ.version and h[0] == chal.version:
            self.test.update(loss_c, loss_h)
        # so does the probation, the current champion against the previous one
        if (self.probation is not None and p is not None
                and c[0] == champ.version and p[0] == prev.version):
            loss_p = 0 if p[1] is not None and p[1] == y else 1
            self.probation.update(loss_c, loss_p)
            self.confirmation.update(loss_p, loss_c)

        if self.learning:
            if chal is not None:
                self._train(chal, x, y)
            if not self._warm or self.config.champion_learns:
                self._train(champ, x, y)
        # v1's own count: labels that came while learning was paused do not warm it up
        if not self._warm and champ.learned >= self.config.warmup_labels:
            self._warm = True
            self._new_challenger(f"warm-up over after {champ.learned} labelled events")
        if self.config.policy == "auto":
            self._consult_policy()

    def _evaluate(self, mv: ModelVersion, score: tuple, y: Any, loss: int) -> None:
        metrics = mv.metrics
        if metrics.frozen:  # a late label for a version whose model was since dropped
            return
        metrics.update(y, score[1], score[2])
        detector = mv.detector
        if detector is not None and detector.update(loss):
            self._on_drift(mv, detector.change)

    def _shadow_failed(self, mv: ModelVersion, error: Exception) -> None:
        self.counts["shadow_errors"] += 1
        self.shadow_error = f"v{mv.version} could not score an event: {type(error).__name__}: {error}"

    def _train(self, mv: ModelVersion, x: dict, y: Any) -> None:
        try:
            mv.model.learn_one(x, y)
        except Exception as e:  # noqa: BLE001 - a model that cannot learn one event is reported, not fatal
            self.counts["learn_errors"] += 1
            self.learn_error = f"v{mv.version} could not learn: {type(e).__name__}: {e}"
            return  # the event was served: not bad input (counts["learn_errors"] says it)
        mv.learned += 1

    def _evicted(self, kind: str, reason: str, evicted: list) -> None:
        if evicted:
            self.observer.pending_evicted(kind, reason, len(evicted))
            if kind == "predictions":  # a label that comes for one of these is late, not unknown
                expired = self._expired
                for id_, _ in evicted:
                    expired[id_] = None
                while len(expired) > _REMEMBERED_EXPIRED:
                    expired.popitem(last=False)

    def _bad(self, reason: str) -> RefusedInputError:
        self.counts["bad"] += 1
        self.observer.bad_input(reason)
        return RefusedInputError(reason)

    # --- drift and policy ----------------------------------------------------------------

    def _on_drift(self, mv: ModelVersion, change: tuple[float, float] | None) -> None:
        role = "champion" if mv is self._champ else "challenger"
        if change is not None:  # the detector's own split at the change point
            before, after = change
        else:  # a detector that does not expose its window: the metrics' views
            cumulative, window = mv.metrics.cumulative(), mv.metrics.windowed()
            before, after = 1.0 - cumulative["accuracy"], 1.0 - window["accuracy"]
        self._emit("drift_detected", role=role, version=mv.version, detector=self.config.detector,
                   error_before=before, error_after=after)
        if role != "challenger" or self.config.policy != "auto" or after <= before:
            return
        policy = self.config.promotion
        since = self.counts["labelled"] - self._challenger_born
        if should_reset_on_drift(labels_since_created=since, error_before=before,
                                 error_after=after, config=policy):
            self._replace_challenger(None, f"drift: error rose from {before:.3f} to {after:.3f}")
        else:
            self._alarm_at = self.counts["labelled"]  # blocks promotion while within grace

    def _consult_policy(self) -> None:
        policy = self.config.promotion
        labelled = self.counts["labelled"]
        if self.probation is not None:
            since = labelled - self._promoted_at
            if since >= policy.probation or self.probation.rejected or self.confirmation.rejected:
                verdict = decide_rollback(labels_since_promotion=since, test=self.probation, config=policy,
                                          confirmation=self.confirmation)
                if verdict.outcome == "rollback":
                    self._decide("rollback", verdict, to_version=self._prev.version)
                    return
                if verdict.outcome == "end_probation":
                    self._emit("probation_ended", previous=self._prev.version, reason=verdict.reason,
                               statistic=verdict.statistic)
                    self._end_probation()
        if self._chal is None:
            return
        age = labelled - self._challenger_born
        if age < policy.min_labels or (age < policy.max_labels and not self.test.rejected):
            return  # the common case, decided without building a verdict
        verdict = decide_promotion(
            labels_since_created=age, test=self.test,
            challenger_drift_active=labelled - self._alarm_at < policy.grace,
            labels_since_transition=labelled - self._transition_at, config=policy,
        )
        if verdict.outcome == "promote":
            self._decide("promote", verdict)
        elif verdict.outcome == "inconclusive":
            self._replace_challenger(None, f"inconclusive: {verdict.reason}")

    def _decide(self, kind: str, verdict: Verdict, to_version: int | None = None) -> None:
        """Apply our own decision now and queue it for the control log."""
        target = to_version if to_version is not None else self._chal.version
        at = self.counts["labelled"]
        command = Command(
            type=kind, command_id=f"{DECISION_PREFIX}{kind}-v{self._champ.version}-to-v{target}-at-{at}",
            issued_by=DECISION_ISSUER, reason=verdict.reason, expected_champion=self._champ.version,
            to_version=to_version, ts=self._ts,
        )
        self._decisions.append(command)
        self.apply(command)

    # --- commands ------------------------------------------------------------------------

    def apply(self, command: Command) -> None:
        """Apply a command from the control log, once per ``command_id``; the answer is a
        ``command_applied`` or ``command_rejected`` lifecycle event."""
        if command.command_id in self._applied:
            return
        self._applied[command.command_id] = None
        if len(self._applied) > _REMEMBERED_COMMANDS:
            self._applied.popitem(last=False)
        try:
            if command.type not in COMMAND_TYPES:
                raise CommandRejected(f"unknown command type {command.type!r}")
            expected = command.expected_champion
            if expected is not None and expected != self._champ.version:
                raise CommandRejected(
                    f"stale: expected champion v{expected}, but the champion is v{self._champ.version}"
                )
            getattr(self, f"_cmd_{command.type}")(command)
        except CommandRejected as e:
            self.reject(command, str(e))
            return
        self._emit("command_applied", command.command_id, command=command.type, issued_by=command.issued_by)

    def has_applied(self, command_id: str) -> bool:
        """Whether a command with this id was applied (or refused by the engine) among the
        last 100,000: read again, it is a no-op."""
        return command_id in self._applied

    def reject(self, command: Command, reason: str) -> None:
        """Answer a command with ``command_rejected`` (also used by the edge, e.g. for a
        missing signature)."""
        self._emit("command_rejected", command.command_id, command=command.type,
                   issued_by=command.issued_by, reason=reason)

    def _cmd_promote(self, command: Command) -> None:
        if self._chal is None:
            raise CommandRejected("there is no challenger to promote yet (warm-up)")
        old, new = self._champ, self._chal
        statistic = self.test.summary()
        if self._prev is not None:
            self._end_probation()
        self._prev, self._champ, self._chal, self.test = old, new, None, None
        old.detector = None
        old.roles.append("previous")
        self._take_role(new, "champion")
        self.probation, self.confirmation = self.config.promotion.new_test(), self.config.promotion.new_test()
        self._promoted_at = self._transition_at = self.counts["labelled"]
        self.counts["promotions"] += 1
        self._emit("promoted", command.command_id, from_version=old.version, to_version=new.version,
                   reason=command.reason, issued_by=command.issued_by, statistic=statistic)
        self._new_challenger(f"after promotion of v{new.version}", command.command_id)

    def _cmd_rollback(self, command: Command) -> None:
        target = command.to_version
        if target is None:
            target = self._prev.version if self._prev else self._former_champion()
            if target is None:
                raise CommandRejected("no former champion to roll back to")
        if target not in self.registry:
            raise CommandRejected(f"v{target} does not exist")
        if target == self._champ.version:
            raise CommandRejected(f"v{target} is already the champion")
        if self._chal is not None and target == self._chal.version:
            raise CommandRejected(f"v{target} is the challenger, not a former champion: promote it instead")
        if "champion" not in self.registry[target].roles:
            raise CommandRejected(f"v{target} was never champion: a rollback goes back to a former champion")
        if self.registry[target].model is None:
            self._bring_back(self.registry[target])
        bad, restored = self._champ, self.registry[target]
        statistic = self.probation.summary() if self.probation else None
        self.registry.reinstate(restored.version)  # first: retiring others must not push it out
        if self._prev is not None and self._prev is not restored:
            self.registry.retire(self._prev.version, keep_model=True)
        self._prev = self.probation = self.confirmation = None
        bad.detector = None
        self.registry.retire(bad.version, keep_model=True)
        restored.detector = self._new_detector()
        self._champ = restored
        self._take_role(restored, "champion")
        self._transition_at = self.counts["labelled"]
        self.counts["rollbacks"] += 1
        self._emit("rolled_back", command.command_id, from_version=bad.version, to_version=restored.version,
                   reason=command.reason, issued_by=command.issued_by, statistic=statistic)
        if self._chal is not None:  # it keeps learning; only its comparison starts again
            self.test = self.config.promotion.new_test()
            self._challenger_born = self.counts["labelled"]

    def _bring_back(self, mv: ModelVersion) -> None:
        """Give a dropped former champion its model again, from :attr:`model_source`
        (the edge's reader of the ``models`` topic), so that a rollback can reach it.
        Its metrics start afresh: the dropped ones were frozen."""
        try:
            model = self.model_source(mv.version) if self.model_source is not None else None
        except Exception as e:  # noqa: BLE001 - a missing or refused model makes the command fail, not us
            raise CommandRejected(f"v{mv.version} is not retained, and reading it back failed: {e}") from e
        if model is None:
            raise CommandRejected(f"v{mv.version} is not a retained version, nor on the models topic "
                                  "(pruned there by models_retain, or never published)")
        mv.model, mv.metrics = model, Prequential(self.config.window, self.config.fading)
        self.registry.retire(mv.version, keep_model=True)  # retained again, like any former champion

    def _cmd_pause_learning(self, command: Command) -> None:
        self.learning = False

    def _cmd_resume_learning(self, command: Command) -> None:
        self.learning = True

    def _cmd_reset_challenger(self, command: Command) -> None:
        if self._chal is None:
            raise CommandRejected("there is no challenger to reset yet (warm-up)")
        self._replace_challenger(command.command_id, command.reason or "reset by operator")

    def _cmd_set_split(self, command: Command) -> None:
        percent = command.percent
        if percent is None or not 0.0 <= percent <= 100.0:
            raise CommandRejected(f"set_split needs a percent between 0 and 100, got {percent!r}")
        self.split = float(percent)
        if self.arms is None:
            self.arms = {arm: Prequential(self.config.window, self.config.fading)
                         for arm in ("champion", "challenger")}

    def _cmd_snapshot(self, command: Command) -> None:
        self.snapshot_requested = True

    def _cmd_status(self, command: Command) -> None:
        self._emit("status_report", command.command_id, **self.status())

    def report_status(self) -> None:
        """Emit a ``status_report`` that answers no command (the worker's periodic one)."""
        self._emit("status_report", None, **self.status())

    def count_undecodable(self) -> None:
        """Count an input message the edge could not decode (it dead-letters it): with the
        engine's own refusals (``bad``) these are in the status and the snapshots."""
        self.counts["undecodable"] += 1

    # --- roles and versions --------------------------------------------------------------

    def _create(self, spec: str, model: Any, parent: int | None, reason: str) -> ModelVersion:
        mv = self.registry.create(spec, model=model, parent=parent, reason=reason,
                                  labelled=self.counts["labelled"], ts=self._ts)
        mv.metrics = Prequential(self.config.window, self.config.fading)
        mv.detector = self._new_detector()
        return mv

    def _new_detector(self) -> ErrorDetector:
        return ErrorDetector(parse_detector(self.config.detector))

    def _take_role(self, mv: ModelVersion, role: str) -> None:
        mv.roles.append(role)
        if role == "champion":
            self.champion_history.append(mv.version)

    def _new_challenger(self, reason: str, command_id: str | None = None) -> None:
        champ = self._champ
        if self.config.challenger_init == "copy":
            mv = self._create(champ.spec, copy_model(champ.model), champ.version, f"copy: {reason}")
        else:
            spec = self.config.challenger_spec
            mv = self._create(spec, parse_model(spec), None, f"fresh: {reason}")
        self._take_role(mv, "challenger")
        self._chal, self.test = mv, self.config.promotion.new_test()
        self._challenger_born = self.counts["labelled"]
        self._alarm_at = -(10**12)  # the former challenger's alarm must not hold this one back
        self._emit("challenger_created", command_id, version=mv.version, init=self.config.challenger_init,
                   spec=mv.spec, reason=reason)

    def _replace_challenger(self, command_id: str | None, reason: str) -> None:
        old = self._chal
        statistic = self.test.summary()
        self.registry.retire(old.version, keep_model=False)
        old.detector = None
        self._chal = self.test = None
        self._transition_at = self.counts["labelled"]
        self.counts["resets"] += 1
        self._emit("challenger_reset", command_id, version=old.version, reason=reason, statistic=statistic)
        self._new_challenger(f"replaces v{old.version}", command_id)

    def _end_probation(self) -> None:
        self.registry.retire(self._prev.version, keep_model=True)
        self._prev = self.probation = self.confirmation = None

    def _former_champion(self) -> int | None:
        """The retained champion before the current one in the line of champions: a
        promotion extends the line, a rollback cuts it back to the version it returns to —
        so a second rollback goes one further back, rather than bringing back the model
        the first one removed."""
        line: list[int] = []
        for version in self.champion_history:
            if version in line:
                del line[line.index(version) + 1:]
            else:
                line.append(version)
        return next((v for v in reversed(line[:-1]) if self.registry[v].model is not None), None)

    # --- outputs -------------------------------------------------------------------------

    def _emit(self, kind: str, command_id: str | None = None, **detail: Any) -> None:
        event = LifecycleEvent(
            type=kind, command_id=command_id, champion=self._champ.version,
            challenger=self._chal.version if self._chal else None, detail=detail,
            offsets={f"{t}:{p}": o for (t, p), o in self.positions.items()},
            labelled=self.counts["labelled"], ts=self._ts, split=self.split,
        )
        self._lifecycle.append(event)
        self.observer.lifecycle(event)

    def take_decisions(self) -> list[Command]:
        """The engine's own decisions since the last call, to write to the control log."""
        out, self._decisions = self._decisions, []
        return out

    @property
    def has_lifecycle(self) -> bool:
        """Whether lifecycle events (and with them, maybe, decisions) await a take."""
        return bool(self._lifecycle)

    def take_lifecycle(self) -> list[LifecycleEvent]:
        """Lifecycle events since the last call, in the order they happened."""
        out, self._lifecycle = self._lifecycle, []
        return out

    @property
    def champion(self) -> int:
        return self._champ.version

    @property
    def challenger(self) -> int | None:
        return self._chal.version if self._chal else None

    @property
    def previous(self) -> int | None:
        return self._prev.version if self._prev else None

    @property
    def warmed_up(self) -> bool:
        """Whether version 1's warm-up is over (from then on the champion is frozen,
        unless ``champion_learns``)."""
        return self._warm

    def serving_learners(self) -> list[int]:
        """The versions that serve while they still learn: the champion in its warm-up or
        with ``champion_learns``, and the challenger while a traffic split serves it. A
        copy of one of them (on the `models` topic, for scorers) goes stale as it learns."""
        versions = [self._champ.version] if not self._warm or self.config.champion_learns else []
        if self.split and self._chal is not None:
            versions.append(self._chal.version)
        return versions

    def status(self) -> dict[str, Any]:
        """Versions, roles, metrics of the active models, the tests: for `status_report`,
        `worker control status` and the metrics exporter."""
        active = {"champion": self._champ, "challenger": self._chal, "previous": self._prev}
        return {
            "champion": self.champion,
            "challenger": self.challenger,
            "previous": self.previous,
            "policy": self.config.policy,
            "learning": self.learning,
            "split_percent": self.split,
            "counts": dict(self.counts),
            "pending": {"predictions": len(self.pending), "labels": len(self.early),
                        **{f"predictions_{k}": v for k, v in self.pending.counters().items()},
                        **{f"labels_{k}": v for k, v in self.early.counters().items()},
                        "labels_late": self.late_labels},
            "test": self.test.summary() if self.test else None,
            "probation": self.probation.summary() if self.probation else None,
            "served": self.served.report(),
            "arms": {arm: m.report() for arm, m in self.arms.items()} if self.arms else None,
            "models": {role: {**mv.lineage(), "metrics": mv.metrics.report()}
                       for role, mv in active.items() if mv is not None},
        }

    # --- state ---------------------------------------------------------------------------

    def snapshot(self, secret: bytes | str, meta: dict[str, Any] | None = None) -> bytes:
        """The whole engine as signed bytes (see :mod:`worker.core.state`); ``meta``: what
        the caller wants signed with it (the Kafka edge: the records the snapshot covers)."""
        meta = {**(meta or {}), "events": self.counts["events"], "labelled": self.counts["labelled"],
                "champion": self.champion, "challenger": self.challenger}
        return state.dump(self, secret, meta=meta)

    @classmethod
    def restore(cls, data: bytes, secret: bytes | str | Sequence[bytes | str],
                config: EngineConfig | None = None) -> Engine:
        """Rebuild an engine from :meth:`snapshot`, signed with ``secret`` or one of several
        (after a rotation). The restored models win over ``config``'s specs: a new
        challenger spec applies to the next challenger."""
        engine = state.load(data, secret)
        if not isinstance(engine, cls):
            raise SnapshotError(f"the snapshot holds a {type(engine).__name__}, not an engine")
        if config is not None:
            if config.challenger_spec != engine.config.challenger_spec:
                log.info("challenger spec changed to %r: it applies to the next challenger created",
                         config.challenger_spec)
            engine.config = config
        return engine  # with a no-op observer (__setstate__): the caller gives it its own

    def __getstate__(self) -> dict[str, Any]:
        values = self.__dict__.copy()
        del values["observer"]
        values.pop("model_source", None)
        return values

    def __setstate__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self.observer = Observer()
        self.model_source = None
        # Older snapshots: before dropped versions' metrics were frozen; worker 0.1.0
        # (e8d67cf): no undecodable count, bare river detectors.
        self.counts.setdefault("undecodable", 0)
        self.counts.setdefault("shadow_errors", 0)
        self.__dict__.setdefault("_prev_ts", self._ts)  # before the clock took the last two event times
        self.__dict__.setdefault("_classes", set())  # before max_classes: counted from the restore on
        self.__dict__.setdefault("_expired", OrderedDict())  # before late labels were told apart
        self.__dict__.setdefault("late_labels", 0)
        if "confirmation" not in values:  # before probations could end early: from the probation's counts
            self.confirmation = None if self.probation is None else self.probation.mirrored()
        for mv in self.registry:
            if mv.detector is not None and not isinstance(mv.detector, ErrorDetector):
                mv.detector = ErrorDetector(mv.detector)
            if mv.model is None and mv.metrics is not None and not mv.metrics.frozen:
                mv.metrics = mv.metrics.freeze()


def copy_model(model: Any) -> Any:
    """An identical, independent copy of a (trained) model, for a copy-initialised challenger.

    A pickle round trip: the same state as ``copy.deepcopy`` (both go through the
    objects' ``__reduce_ex__``/``__getstate__``), built by C code instead of a Python
    recursion, so 2-5x faster on a grown tree or forest. ``random.Random`` objects are
    left out of the bytes and handed over in memory (:class:`_Pickler`): a Hoeffding
    tree holds one per Gaussian, a few hundred per grown tree, each with a 625-word
    state that was most of the copy's bytes and time. A tree after 20k Elec2 events
    copies in ~3.5 ms (~11 ms with the states pickled, ~27 with ``deepcopy``). A model
    that does not pickle (e.g. one holding a lambda) falls back to ``copy.deepcopy``.

    >>> import random
    >>> r = random.Random(7)
    >>> twin = copy_model({"rng": r, "same": r})
    >>> twin["rng"] is not r and twin["rng"] is twin["same"] and twin["rng"].random() == r.random()
    True
    """
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    try:
        pickler.dump(model)
    except (pickle.PicklingError, TypeError, AttributeError):  # what an unpicklable object raises
        return copy.deepcopy(model)
    buffer.seek(0)
    return _Unpickler(buffer, pickler.rngs).load()


class _Pickler(pickle.Pickler):
    """Writes each ``random.Random`` as its index in :attr:`rngs` (a persistent id)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.rngs: list[random.Random] = []
        self._index: dict[int, int] = {}  # id → index: a shared generator stays shared

    def persistent_id(self, obj: Any) -> int | None:
        if type(obj) is not random.Random:
            return None
        index = self._index.setdefault(id(obj), len(self.rngs))
        if index == len(self.rngs):
            self.rngs.append(obj)
        return index


class _Unpickler(pickle.Unpickler):
    """Gives each index of :class:`_Pickler` a new generator in the original's state."""

    def __init__(self, file: io.BytesIO, rngs: list[random.Random]) -> None:
        super().__init__(file)
        self._rngs = rngs
        self._copies: dict[int, random.Random] = {}

    def persistent_load(self, index: int) -> random.Random:
        if index not in self._copies:
            rng = random.Random.__new__(random.Random)  # not seeded: setstate sets all of it
            rng.setstate(self._rngs[index].getstate())
            self._copies[index] = rng
        return self._copies[index]
