"""`worker replay`: drive the engine over records from a file and write what happened.

Without Kafka there is no control log: the engine applies its own decisions as it
takes them, exactly as it does in a Kafka worker. Outputs in the run folder:

- ``lifecycle.jsonl``: every lifecycle event, in order;
- ``timeline.jsonl``: the metrics of both models every ``timeline_every`` labels;
- ``summary.json``: counts, versions, served and per-version metrics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from worker.core.engine import Engine
from worker.core.types import Event, LifecycleEvent
from worker.errors import BadInputError
from worker.io.files import BadRecord, Record

#: Refused records quoted in the summary; the others are only counted.
BAD_EXAMPLES = 20


def replay(records: Iterable[Record | BadRecord], engine: Engine, out_dir: Path | None, *,
           timeline_every: int = 500, on_record: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run every record through ``engine``; return the summary (also written to ``out_dir``)."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    bad = _BadLog()
    with _open(out_dir, "lifecycle.jsonl") as lifecycle, _open(out_dir, "timeline.jsonl") as timeline:
        next_point = timeline_every
        for record in records:
            if on_record is not None:
                on_record()
            if isinstance(record, BadRecord):
                bad.add(record.line, record.reason)
                continue
            try:
                if isinstance(record, Event):
                    engine.process(record)
                else:
                    engine.process_label(record)
            except BadInputError as e:
                bad.add(record.position[2] if record.position else None, str(e))
            if engine.has_lifecycle:  # every decision comes with its lifecycle events
                engine.take_decisions()  # already applied; a Kafka worker writes them to control
                for event in engine.take_lifecycle():
                    _write(lifecycle, lifecycle_dict(event))
            if engine.counts["labelled"] >= next_point:
                _write(timeline, timeline_point(engine))
                next_point = engine.counts["labelled"] + timeline_every
        _write(timeline, timeline_point(engine))
    result = summary(engine, bad.count, bad.examples)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def summary(engine: Engine, bad: int, bad_examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's counts, versions and metrics; ``bad`` records were refused, the first
    few of them are ``bad_examples``."""
    counts = engine.counts
    served = engine.served.cumulative()
    return {
        "events": counts["events"],
        "labelled": counts["labelled"],
        "bad": bad,
        "bad_examples": bad_examples,
        "learn_errors": counts["learn_errors"],
        "learn_error": engine.learn_error,
        "shadow_errors": counts["shadow_errors"],
        "shadow_error": engine.shadow_error,
        "promotions": counts["promotions"],
        "rollbacks": counts["rollbacks"],
        "challenger_resets": counts["resets"],
        "champion": engine.champion,
        "challenger": engine.challenger,
        "served": {"accuracy": served["accuracy"], "f1": served["f1"], "n": served["n"]},
        "pending": engine.status()["pending"],
        "models": {
            str(mv.version): {
                "spec": mv.spec,
                "accuracy": (m := mv.metrics.cumulative())["accuracy"],
                "f1": m["f1"],
                "labelled": m["n"],
                **{k: v for k, v in mv.lineage().items() if k not in ("version", "spec")},
            }
            for mv in engine.registry
        },
    }


def timeline_point(engine: Engine) -> dict[str, Any]:
    point: dict[str, Any] = {"events": engine.counts["events"], "labelled": engine.counts["labelled"],
                             "served": _views(engine.served)}
    for role, version in (("champion", engine.champion), ("challenger", engine.challenger)):
        if version is not None:
            point[role] = {"version": version, **_views(engine.registry[version].metrics)}
    return point


def lifecycle_dict(event: LifecycleEvent) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(event).items() if v is not None}


def _views(metrics: Any) -> dict[str, Any]:
    report = metrics.report()
    return {view: {"accuracy": report[view]["accuracy"], "f1": report[view]["f1"], "n": report[view]["n"]}
            for view in ("cumulative", "window", "fading")}


class _BadLog:
    """Counts refused records and keeps the first few (memory stays flat however many)."""

    def __init__(self, keep: int = BAD_EXAMPLES) -> None:
        self.count = 0
        self.keep = keep
        self.examples: list[dict[str, Any]] = []

    def add(self, line: int | None, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append({"line": line, "reason": reason})


class _Null:
    def write(self, text: str) -> int:
        return 0

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _open(out_dir: Path | None, name: str) -> TextIO | _Null:
    return (out_dir / name).open("w") if out_dir is not None else _Null()


def _write(f: TextIO | _Null, obj: dict[str, Any]) -> None:
    f.write(json.dumps(obj, default=str) + "\n")
