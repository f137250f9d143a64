"""What `worker report` shows, as plain JSON-able values, whichever source it came from.

Both sources (:mod:`worker.obs.report_replay`, :mod:`worker.obs.report_control`) fill
one :class:`ReportData`; the charts and the page read only that. The helpers here are
the steps both sources share, so the two cannot drift apart in what a point or the
summary holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("champion", "challenger")
VIEWS = ("window", "fading")


@dataclass
class ReportData:
    """Everything the page shows, in plain JSON-able values."""

    source: str
    points: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions_note: str = ""  # where the versions table's metrics come from, when not obvious
    # the A/B comparison of served traffic (arm → view → metrics), once a split was set
    arms: dict[str, dict[str, dict[str, Any]]] | None = None
    split: float | None = None


def view_values(view: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and F1 of one view; None while the model has no labelled prediction
    (``n`` = 0: an empty metric reads 0.0, which is no measurement)."""
    empty = view.get("n", 1) == 0
    return {m: None if empty else view.get(m) for m in ("accuracy", "f1")}


def make_summary(*, events: Any, labelled: Any, bad: Any, promotions: Any, rollbacks: Any,
                 challenger_resets: Any, drift_alarms: int, champion: Any, challenger: Any,
                 served: dict[str, Any]) -> dict[str, Any]:
    """The summary cards' values, named (and ordered, for the embedded JSON) the same
    for both sources; ``served`` holds the served traffic's accuracy and F1."""
    return {
        "events": events, "labelled": labelled, "bad": bad, "promotions": promotions, "rollbacks": rollbacks,
        "challenger_resets": challenger_resets, "drift_alarms": drift_alarms, "champion": champion,
        "challenger": challenger, "served_accuracy": served.get("accuracy"), "served_f1": served.get("f1"),
    }


def count_of(lifecycle: list[dict[str, Any]], kind: str) -> int:
    """How many lifecycle events of type ``kind``."""
    return sum(1 for e in lifecycle if e.get("type") == kind)


def blank_unscored(data: ReportData) -> None:
    """A model has no metrics before its first labelled event: its values are None
    there (a gap in the line), not the 0.0 an empty metric reads."""
    born = {row["version"]: row.get("created_labelled", 0) for row in data.versions}
    for point in data.points:
        for role in ROLES:
            model = point.get(role)
            if model and point["labelled"] <= born.get(model["version"], 0):
                for view in VIEWS:
                    model[view] = {"accuracy": None, "f1": None}
