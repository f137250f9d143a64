"""Decoded ``control`` messages, in log order → :class:`~worker.obs.report_data.ReportData`.

The lifecycle events the worker wrote give the markers, the tables and the lineage.
The metrics over time come from the ``status_report`` events on the topic — the worker
writes one every ``status_interval_s`` (60 s by default) and one in answer to every
``status`` command (``worker control status``, the demo's polling, or `worker report`'s
own ``--ask-status``). Reading the topic from Kafka is :mod:`worker.obs.report_kafka`'s
job; this module needs no broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.obs.report_data import (
    ROLES,
    VIEWS,
    ReportData,
    blank_unscored,
    count_of,
    make_summary,
    view_values,
)
from worker.obs.report_lifecycle import absorb_lifecycle

EARLIER_ENGINE_NOTE = ("The control topic also holds an earlier engine's history (before a --fresh start): "
                       "this report shows the current engine only.")
NO_STATUS_NOTE = ("No status_report on the control topic: no metrics over time (is the worker running? "
                  "`worker control status` writes one).")
FEW_STATUS_NOTE = ("Few status reports on the control topic, so few points over time: the worker writes one "
                   "every `status_interval_s` (60 s) and one per `status` command.")
VERSIONS_NOTE = ("Learned, accuracy and F1 of a version as of the last status report that named it: a former "
                 "champion's stop where it was replaced (`worker models list` has what each published "
                 "version had learned).")


@dataclass
class _ControlLog:
    """What the log has said so far, of the engine that wrote it last."""

    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[int, dict[str, Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    last_status: dict[str, Any] | None = None
    earlier_engine: bool = False  # an earlier engine's history was left out

    def add(self, message: Any) -> None:
        """Commands (no ``detail``) are skipped; each ``status_report`` gives a point."""
        if not isinstance(message, dict) or "detail" not in message or "type" not in message:
            return  # a command, or something that is not ours
        if message["type"] != "status_report":
            self.lifecycle.append(message)
            return
        status = message["detail"]
        if self._starts_a_new_engine(status):
            self.earlier_engine = True
            self.lifecycle, self.lineage, self.points = [], {}, []
        self.last_status = status
        self._learn_lineage(status)
        point = _status_point(message, status)
        if self.points and self.points[-1]["labelled"] == point["labelled"]:
            self.points[-1] = point  # an idle worker answered again: same point
        else:
            self.points.append(point)

    def _starts_a_new_engine(self, status: dict[str, Any]) -> bool:
        """A worker writes a status report as it starts: one that has seen no event, after
        one that had, is a new engine (after ``--fresh``, its versions count from 1
        again), not a restart."""
        return bool(status.get("counts", {}).get("events") == 0 and self.last_status
                    and self.last_status.get("counts", {}).get("events"))

    def _learn_lineage(self, status: dict[str, Any]) -> None:
        """Each model a status report names: its lineage, and its cumulative metrics as of then."""
        for model in status.get("models", {}).values():
            cumulative = model.get("metrics", {}).get("cumulative", {})
            self.lineage[model["version"]] = {**self.lineage.get(model["version"], {}),
                                              **{k: v for k, v in model.items() if k != "metrics"},
                                              **view_values(cumulative), "labelled": cumulative.get("n")}


def load_control(messages: Iterable[dict[str, Any]], source: str = "control topic") -> ReportData:
    """Decoded ``control`` messages, in log order → :class:`ReportData`.

    Commands (no ``detail``) are skipped; lifecycle events give the markers, the table
    and the lineage; each ``status_report`` gives a point of the timeline. Of a log that
    holds more than one engine's history (a ``--fresh`` start), only the last engine's.
    """
    log = _ControlLog()
    for message in messages:
        log.add(message)
    status = log.last_status or {}
    champion = log.last_status["champion"] if log.last_status else _last(log.lifecycle, "champion", 1)
    challenger = log.last_status["challenger"] if log.last_status else _last(log.lifecycle, "challenger")
    data = ReportData(source=source, points=log.points)
    absorb_lifecycle(data, log.lifecycle, log.lineage, champion, challenger)
    data.arms = status.get("arms")
    # every lifecycle event says the split after it (releases before 0.2: only status reports)
    data.split = _last(log.lifecycle, "split", status.get("split_percent"))
    data.summary = _summary(status, log.lifecycle, champion, challenger)
    data.notes = _notes(log)
    data.versions_note = VERSIONS_NOTE
    blank_unscored(data)
    return data


def _status_point(message: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """One status report → one point: the version and metrics of each role (None: no model)."""
    counts = status.get("counts", {})
    point: dict[str, Any] = {"labelled": counts.get("labelled", message.get("labelled", 0)),
                             "events": counts.get("events")}
    for role, model in status.get("models", {}).items():
        if role in ROLES:
            metrics = model.get("metrics", {})
            point[role] = {"version": model["version"], **{v: view_values(metrics.get(v, {})) for v in VIEWS}}
    for role in ROLES:
        point.setdefault(role, None)
    return point


def _summary(status: dict[str, Any], lifecycle: list[dict[str, Any]], champion: int | None,
             challenger: int | None) -> dict[str, Any]:
    """The last status report's counts; the lifecycle events' where it has none."""
    counts = status.get("counts", {})
    return make_summary(
        events=counts.get("events"), labelled=counts.get("labelled"), bad=counts.get("bad"),
        promotions=counts.get("promotions", count_of(lifecycle, "promoted")),
        rollbacks=counts.get("rollbacks", count_of(lifecycle, "rolled_back")),
        challenger_resets=counts.get("resets", count_of(lifecycle, "challenger_reset")),
        drift_alarms=count_of(lifecycle, "drift_detected"), champion=champion, challenger=challenger,
        served=status.get("served", {}).get("cumulative", {}))


def _notes(log: _ControlLog) -> list[str]:
    """What the reader should know about what the log could not tell."""
    notes = [EARLIER_ENGINE_NOTE] if log.earlier_engine else []
    if log.last_status is None:
        notes.append(NO_STATUS_NOTE)
    elif len(log.points) < 3:
        notes.append(FEW_STATUS_NOTE)
    return notes


def _last(lifecycle: list[dict[str, Any]], key: str, default: Any = None) -> Any:
    """``key`` of the newest lifecycle event that has it."""
    for event in reversed(lifecycle):
        if key in event:
            return event[key]
    return default
