"""Read events from files for `worker replay`: JSONL in the Kafka message format, or CSV.

Each record becomes the same plain objects the Kafka edge produces (`Event`, `Label`),
or a `BadRecord` that the caller counts and reports — a bad line never stops a replay.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.core.types import Event, Label
from worker.errors import BadInputError, ConfigError
from worker.io.codec import decode_record

Record = Event | Label


@dataclass(frozen=True, slots=True)
class BadRecord:
    line: int
    reason: str


def read_records(path: Path, *, target: str | None = None, id_column: str | None = None,
                 drop: Sequence[str] = (), positive: str | None = None) -> Iterator[Record | BadRecord]:
    """Events (and delayed labels) of a `.jsonl` / `.csv` file, in file order."""
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    if path.suffix.lower() == ".csv":
        if not target:
            raise ConfigError("a CSV replay needs --target COLUMN (the label column)")
        return read_csv(path, target=target, id_column=id_column, drop=drop, positive=positive)
    return read_jsonl(path)


def read_jsonl(path: Path) -> Iterator[Record | BadRecord]:
    """One JSON object per line: an event (`id`, `features`, optional `label`, `ts`, `key`),
    or a delayed label (`id`, `label`, no `features`)."""
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            try:  # one JSON parse per line: decode_record tells events from labels
                yield decode_record(line, ("file", 0, number))
            except BadInputError as e:
                if line.strip():  # a blank line is skipped, not bad
                    yield BadRecord(number, str(e))


def read_csv(path: Path, *, target: str, id_column: str | None, drop: Sequence[str],
             positive: str | None) -> Iterator[Record | BadRecord]:
    """A header row, then one event per row: every column but the target, the id and the
    dropped ones is a feature; numbers become floats, empty cells are missing."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for name in [target, *([id_column] if id_column else []), *drop]:
            if name not in columns:
                raise ConfigError(f"column {name!r} is not in {path.name} (columns: {', '.join(columns)})")
        skip = {target, id_column, *drop}
        features_of = [c for c in columns if c not in skip]
        for number, row in enumerate(reader, start=1):
            if None in row or any(v is None for v in row.values()):
                yield BadRecord(number + 1, f"row has {len(row)} cells, the header {len(columns)}")
                continue
            features = {c: _cell(row[c]) for c in features_of if row[c] != ""}
            raw = row[target]
            label = (raw == positive) if positive is not None else _label(raw)
            event_id = row[id_column] if id_column else str(number)
            yield Event(id=event_id, features=features, label=label, position=("file", 0, number + 1))


def _cell(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _label(text: str) -> bool | str | None:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text if text != "" else None
