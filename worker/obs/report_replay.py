"""A ``worker replay --out DIR`` folder → :class:`~worker.obs.report_data.ReportData`.

``timeline.jsonl`` gives the metrics of both models every N labels, ``lifecycle.jsonl``
the decisions, and ``summary.json`` the counts and the version lineage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
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

FILES = ("timeline.jsonl", "lifecycle.jsonl", "summary.json")


def load_replay(folder: Path) -> ReportData:
    """A ``worker replay --out`` folder → :class:`ReportData`."""
    missing = [n for n in FILES if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a `worker replay --out` folder: no {', '.join(missing)}")
    summary = json.loads((folder / "summary.json").read_text())
    lifecycle = _read_jsonl(folder / "lifecycle.jsonl")
    lineage = {int(v): {"version": int(v), **m} for v, m in summary.get("models", {}).items()}
    data = ReportData(source=f"replay folder {folder}")
    data.points = [_point(raw) for raw in _read_jsonl(folder / "timeline.jsonl")]
    absorb_lifecycle(data, lifecycle, lineage, summary.get("champion"), summary.get("challenger"))
    data.summary = make_summary(
        events=summary.get("events"), labelled=summary.get("labelled"), bad=summary.get("bad"),
        promotions=summary.get("promotions"), rollbacks=summary.get("rollbacks"),
        challenger_resets=summary.get("challenger_resets"),
        drift_alarms=count_of(lifecycle, "drift_detected"), champion=summary.get("champion"),
        challenger=summary.get("challenger"),
        served=summary.get("served", {}))
    blank_unscored(data)
    return data


def _point(raw: dict[str, Any]) -> dict[str, Any]:
    """One timeline line → one point: both roles' version and metrics (None: no model)."""
    point = {"labelled": raw.get("labelled", 0), "events": raw.get("events")}
    for role in ROLES:
        model = raw.get(role)
        point[role] = None if model is None else {"version": model["version"],
                                                  **{v: view_values(model[v]) for v in VIEWS}}
    return point


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (blank lines skipped); a bad line is a ConfigError naming it."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{number}: not JSON ({e.msg})") from None
    return out
