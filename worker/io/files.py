"""Read events from files for `worker replay`: JSONL in the Kafka message format, or CSV.

Each record becomes the same plain objects the Kafka edge produces (`Event`, `Label`),
or a `BadRecord` that the caller counts and reports — a bad line never stops a replay.
A file compressed with gzip, bzip2 or xz (`events.jsonl.gz`, `data.csv.xz`) is read as it
streams, so an archived day of traffic replays without unpacking it first.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from worker.core.types import Event, Label
from worker.errors import BadInputError, ConfigError
from worker.io.codec import DEFAULT_LIMITS, decode_record

Record = Event | Label
T = TypeVar("T")
COMPRESSED: dict[str, Callable[[Path], IO[bytes]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True, slots=True)
class BadRecord:
    line: int
    reason: str


def read_records(path: Path, *, target: str | None = None, id_column: str | None = None,
                 drop: Sequence[str] = (), positive: str | None = None,
                 warnings: list[str] | None = None) -> Iterator[Record | BadRecord]:
    """Events (and delayed labels) of a `.jsonl` / `.csv` file, in file order. What is
    worth a warning but not a bad row (a ``--positive`` never seen) goes to ``warnings``."""
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    if is_csv(path):
        if not target:
            raise ConfigError("a CSV file needs --target COLUMN (the label column)")
        return read_csv(path, target=target, id_column=id_column, drop=drop, positive=positive,
                        warnings=warnings if warnings is not None else [])
    if target or id_column or drop or positive is not None:
        raise ConfigError(f"--target, --id-column, --drop-column and --positive are for CSV files; "
                          f"{path.name} is read as JSONL (one event per line), by its name")
    return read_jsonl(path)


def is_csv(path: Path) -> bool:
    """A file is CSV by its name (`.csv`, also under a compression suffix), else JSONL."""
    name = path.name.lower()
    if path.suffix.lower() in COMPRESSED:
        name = name[: -len(path.suffix)]
    return name.endswith(".csv")


def open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in `.gz`, `.bz2` or `.xz`."""
    return COMPRESSED.get(path.suffix.lower(), Path.open)(path, "rb")


def count_lines(path: Path) -> int:
    """Lines in the (decompressed) file, for a progress bar."""
    with open_bytes(path) as f:
        return sum(chunk.count(b"\n") for chunk in _read_through(iter(lambda: f.read(1 << 20), b""), path))


def _read_through(parts: Iterable[T], path: Path) -> Iterator[T]:
    """The lines or blocks of a file; a damaged or truncated compressed file is a clear
    error, not a traceback half-way through a replay."""
    try:
        yield from parts
    except UnicodeDecodeError as e:  # a CSV file is read as text
        raise ConfigError(f"{path.name} is not UTF-8 text ({e.reason})") from None
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise ConfigError(f"{path.name} cannot be read to its end: {e or 'truncated'}") from None


def read_jsonl(path: Path) -> Iterator[Record | BadRecord]:
    """One JSON object per line: an event (`id`, `features`, optional `label`, `ts`, `key`),
    or a delayed label (`id`, `label`, no `features`)."""
    with open_bytes(path) as f:
        for number, line in enumerate(_read_through(f, path), start=1):
            line = line.rstrip(b"\r\n")
            try:  # one JSON parse per line: decode_record tells events from labels
                yield decode_record(line, ("file", 0, number))
            except BadInputError as e:
                if line.strip():  # a blank line is skipped, not bad
                    yield BadRecord(number, str(e))


def read_csv(path: Path, *, target: str, id_column: str | None, drop: Sequence[str],
             positive: str | None, warnings: list[str]) -> Iterator[Record | BadRecord]:
    """A header row, then one event per row: every column but the target, the id and the
    dropped ones is a feature; numbers become floats, empty cells are missing (an empty
    target cell too: the event is unlabelled). A byte-order mark is ignored; a column
    name given twice is refused, since one of the two would silently be lost."""
    with open_bytes(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(_read_through(f, path))
        columns = next(reader, [])
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ConfigError(f"{path.name}: column {', '.join(map(repr, twice))} appears more than once "
                              "in the header")
        for name in [target, *([id_column] if id_column else []), *drop]:
            if name not in columns:
                raise ConfigError(f"column {name!r} is not in {path.name} (columns: {', '.join(columns)})")
        at = {c: i for i, c in enumerate(columns)}
        skip = {target, id_column, *drop}
        features_of = [(c, at[c]) for c in columns if c not in skip]
        if len(features_of) > DEFAULT_LIMITS.max_features:
            raise ConfigError(f"{path.name} has {len(features_of)} feature columns, more than an event may "
                              f"have ({DEFAULT_LIMITS.max_features}); drop some with --drop-column")
        labels_seen: set[str] = set()
        line, number = reader.line_num, 0  # the line the next record starts after; rows so far
        for cells in reader:
            first_line, line = line + 1, reader.line_num  # a quoted cell may span lines
            if not cells:
                continue  # a blank line is skipped, not bad
            number += 1
            if len(cells) != len(columns):
                yield BadRecord(first_line, f"row has {len(cells)} cells, the header {len(columns)}")
                continue
            try:
                features = {c: _cell(cells[i]) for c, i in features_of if cells[i] != ""}
            except BadInputError as e:
                yield BadRecord(first_line, str(e))
                continue
            raw = cells[at[target]]
            if len(labels_seen) < 20:
                labels_seen.add(raw)
            label = None if raw == "" else (raw == positive) if positive is not None else _label(raw)
            event_id = cells[at[id_column]] if id_column else str(number)
            yield Event(id=event_id, features=features, label=label, position=("file", 0, first_line))
        if positive is not None and positive not in labels_seen and len(labels_seen) < 20:
            seen = ", ".join(sorted(map(repr, labels_seen - {""}))) or "none"
            warnings.append(f"--positive {positive!r} never appears in column {target!r} (values: {seen}): "
                            "every label was false")


def _cell(text: str) -> float | str:
    """A number when the cell is one; a non-finite or huge one is bad input, as it is in
    JSON events (see `Limits`), rather than a string or a poisoned model; so is a long string."""
    try:
        value = float(text)
    except ValueError:
        if len(text) > (longest := DEFAULT_LIMITS.max_string_chars):
            raise BadInputError(f"string cell longer than {longest} characters") from None
        return text
    if not math.isfinite(value):
        raise BadInputError(f"non-finite number {text.strip()!r}")
    if abs(value) > (limit := DEFAULT_LIMITS.max_abs_number):
        raise BadInputError(f"number {text.strip()!r} is larger than {limit:g} in magnitude")
    return value


def _label(text: str) -> bool | str | None:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text if text != "" else None
