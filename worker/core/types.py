"""Plain messages that cross the boundary between the engine and the edges.

The Kafka edge (and `worker replay`) turn raw bytes into these dataclasses; the
engine only ever sees them. `Event` and `Prediction`, made once per event, are not
frozen: a frozen dataclass's ``__init__`` costs ~1.1 µs more (it sets each field through
``object.__setattr__``), which is a few per cent of the per-event budget. Treat them as
read-only all the same. (`Label` stays frozen: early labels are in snapshots, and a
frozen dataclass pickles its fields differently.) Field names follow the JSON contracts of
ARCHITECTURE.md §2, so encoding is a straight mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Where an input message came from: e.g. ``("events", 0, 1234)`` for Kafka, or
#: ``("file", 0, line_number)`` for a replay. Lifecycle events report these.
Position = tuple[str, int, int]


@dataclass(slots=True)
class Event:
    """One event to score. ``label is None`` means no inline label."""

    id: str
    features: dict[str, Any]
    label: Any = None
    ts: float | None = None
    key: str | None = None
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """Delayed ground truth for the event with the same ``id``."""

    id: str
    label: Any
    ts: float | None = None
    position: Position | None = None


@dataclass(slots=True)
class Prediction:
    """What the engine served for one event (ARCHITECTURE.md §2, "Prediction")."""

    id: str
    served_by: str  # "champion" or "challenger" (traffic split)
    model_version: int
    prediction: Any
    proba: dict[Any, float]
    ts: float | None = None
    key: str | None = None
    shadow: dict[str, Any] | None = None  # {"model_version": v, "prediction": y}


COMMAND_TYPES = frozenset(
    {
        "promote",
        "rollback",
        "pause_learning",
        "resume_learning",
        "reset_challenger",
        "set_split",
        "snapshot",
        "status",
    }
)

LIFECYCLE_TYPES = frozenset(
    {
        "promoted",
        "rolled_back",
        "drift_detected",
        "challenger_reset",
        "challenger_created",
        "probation_ended",
        "command_applied",
        "command_rejected",
        "status_report",
    }
)


@dataclass(frozen=True, slots=True)
class Command:
    """An operator command or a worker's own decision, as read from `control`."""

    type: str
    command_id: str
    issued_by: str = "operator"
    reason: str = ""
    expected_champion: int | None = None
    to_version: int | None = None
    percent: float | None = None
    ts: float | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """Something that happened to the lifecycle, in the order it happened.

    ``detail`` holds the type-specific fields (versions involved, test statistic,
    rejection reason, metrics for ``status_report``); ``offsets`` the input positions
    at which it took effect, as ``{"topic:partition": offset}``. ``champion``,
    ``challenger`` and ``split`` (the traffic split's percent) are the state after it, so
    the last lifecycle event on `control` tells a scorer what to serve.
    """

    type: str
    command_id: str | None = None
    champion: int | None = None
    challenger: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    labelled: int = 0  # labelled events the engine had seen when it happened
    ts: float | None = None
    split: float | None = None  # None: written by a release that did not say
