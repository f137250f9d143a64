"""Lifecycle events → what the report lists about them: the charts' markers, the
lifecycle table's rows, and the versions table (lineage, history and role of every
version).

Both sources hand their lifecycle events (in log order) and what they know of each
version's lineage to :func:`absorb_lifecycle`.
"""

from __future__ import annotations

from typing import Any

from worker.obs.report_data import ReportData
from worker.obs.report_format import value_text

MARKER_TYPES = ("drift_detected", "promoted", "rolled_back", "challenger_reset")
TABLE_TYPES = (*MARKER_TYPES, "challenger_created", "probation_ended", "command_rejected")
MARKER_NAMES = {"drift_detected": "drift alarm", "promoted": "promotion", "rolled_back": "rollback",
                "challenger_reset": "challenger reset"}
# commands whose only trace is their answer: the table shows them applied
SETTINGS_COMMANDS = {"pause_learning": "learning paused", "resume_learning": "learning resumed",
                     "set_split": "split set to {split} %"}
# what the versions table takes from a version's lineage, where it knows it
LINEAGE_KEYS = ("spec", "parent", "reason", "created_labelled", "learned", "accuracy", "f1", "labelled",
                "retained")


def absorb_lifecycle(data: ReportData, lifecycle: list[dict[str, Any]], lineage: dict[int, dict[str, Any]],
                     champion: int | None, challenger: int | None) -> None:
    """Markers, the event table and the version table from the lifecycle events (in
    order) and what is known of each version's lineage."""
    data.markers.extend(markers(lifecycle))
    data.events.extend(table_rows(lifecycle))
    data.versions = version_rows(lifecycle, lineage, champion, challenger)


def markers(lifecycle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart marker per drift alarm, promotion, rollback and challenger reset."""
    out = []
    for event in lifecycle:
        kind, detail = event.get("type"), event.get("detail", {})
        if kind in MARKER_TYPES:
            out.append({"labelled": event.get("labelled", 0), "type": kind,
                        "text": _describe(kind, detail, event), "title": _title(kind, detail, event)})
    return out


def table_rows(lifecycle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lifecycle table: the marked events, created challengers, rejected commands
    and the settings commands applied."""
    out = []
    for event in lifecycle:
        kind, detail = event.get("type"), event.get("detail", {})
        if kind in TABLE_TYPES or (kind == "command_applied" and detail.get("command") in SETTINGS_COMMANDS):
            out.append({"labelled": event.get("labelled", 0), "type": kind, "champion": event.get("champion"),
                        "challenger": event.get("challenger"), "text": _describe(kind, detail, event),
                        "reason": detail.get("reason", "")})
    return out


def version_rows(lifecycle: list[dict[str, Any]], lineage: dict[int, dict[str, Any]], champion: int | None,
                 challenger: int | None) -> list[dict[str, Any]]:
    """Every version, by number: how it came to be, what happened to it, what its
    lineage says, and its role now."""
    versions: dict[int, dict[str, Any]] = {1: {"version": 1, "reason": "initial champion", "parent": None,
                                               "created_labelled": 0, "history": ["champion"]}}
    for event in lifecycle:
        _apply_event(versions, event)
    for v, known in lineage.items():
        row = versions.setdefault(v, {"version": v, "history": []})
        for key in LINEAGE_KEYS:
            if known.get(key) is not None:
                row[key] = known[key]
    for v, row in versions.items():
        row["role"] = _role(v, row["history"], champion, challenger)
    return [versions[v] for v in sorted(versions)]


def _apply_event(versions: dict[int, dict[str, Any]], event: dict[str, Any]) -> None:
    """A created challenger gets its row; promotions, rollbacks and resets a line of history."""
    kind, detail, at = event.get("type"), event.get("detail", {}), event.get("labelled", 0)
    if kind == "challenger_created":
        v = detail.get("version")
        reason = detail.get("reason")
        if detail.get("init"):  # as the registry words it
            reason = f"{detail['init']}: {reason}"
        versions[v] = {"version": v, "spec": detail.get("spec"), "reason": reason,
                       "init": detail.get("init"), "created_labelled": at,
                       "parent": event.get("champion") if detail.get("init") == "copy" else None,
                       "history": ["challenger"]}
    elif kind == "promoted":
        _history(versions, detail.get("from_version"), f"replaced at {at}")
        _history(versions, detail.get("to_version"), f"champion at {at}")
    elif kind == "rolled_back":
        _history(versions, detail.get("from_version"), f"rolled back at {at}")
        _history(versions, detail.get("to_version"), f"champion again at {at}")
    elif kind == "challenger_reset":
        _history(versions, detail.get("version"), f"reset at {at}")


def _history(versions: dict[int, dict[str, Any]], version: int | None, what: str) -> None:
    if version is not None:
        versions.setdefault(version, {"version": version, "history": []})["history"].append(what)


def _role(version: int, history: list[str], champion: int | None, challenger: int | None) -> str:
    if version == champion:
        return "champion"
    if version == challenger:
        return "challenger"
    if any(h.startswith("reset") for h in history):
        return "discarded"
    return "former champion" if any("champion" in h for h in history) else "retired"


def _describe(kind: str | None, detail: dict[str, Any], event: dict[str, Any]) -> str:
    """The short text of an event: a marker's label, the table's "what" column."""
    if kind == "drift_detected":
        return f"drift {detail.get('role', '?')} v{detail.get('version', '?')}"
    if kind == "promoted":
        return f"v{detail.get('from_version')}→v{detail.get('to_version')}"
    if kind == "rolled_back":
        return f"rollback v{detail.get('from_version')}→v{detail.get('to_version')}"
    if kind == "challenger_reset":
        return f"reset v{detail.get('version')}"
    if kind == "challenger_created":
        return f"v{detail.get('version')} created ({detail.get('init', '?')})"
    if kind == "probation_ended":
        return f"v{detail.get('previous')} off probation"
    if kind == "command_rejected":
        return f"{detail.get('command', '?')} rejected"
    if kind == "command_applied" and detail.get("command") in SETTINGS_COMMANDS:
        return SETTINGS_COMMANDS[detail["command"]].format(split=value_text(event.get("split")))
    return str(kind)


def _title(kind: str | None, detail: dict[str, Any], event: dict[str, Any]) -> str:
    """A marker's tooltip: what, where, and why."""
    parts = [f"{MARKER_NAMES.get(kind, kind)} at {event.get('labelled', 0)} labelled events"]
    if kind == "drift_detected" and detail.get("error_before") is not None:
        parts.append(f"error {detail['error_before']:.3f} → {detail.get('error_after', float('nan')):.3f}")
    if detail.get("reason"):
        parts.append(str(detail["reason"]))
    return ": ".join(parts)
