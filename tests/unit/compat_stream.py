"""A deterministic drifting stream with delayed and early labels, for snapshot-compatibility
tests. It imports only river and `worker.core.types`, so that an older release of the
worker can run it too (tests/fixtures/make_old_snapshot.py)."""

from __future__ import annotations

from collections.abc import Iterator

from river.datasets import synth

from worker.core.types import Event, Label

CHAMPION = "preprocessing.StandardScaler | linear_model.LogisticRegression"
SECRET = b"compat-test-secret"
EVENTS = 4000
SNAPSHOT_AT = 2419  # messages before the snapshot: in a probation, an early label waiting


def messages() -> Iterator[Event | Label]:
    """Agrawal function 0, then 6 from event 1500 (the frozen champion goes stale).
    Every 7th event's label comes 40 messages later, every 11th's 3 messages early."""
    stream = list(synth.Agrawal(classification_function=0, seed=3).take(1500))
    stream += list(synth.Agrawal(classification_function=6, seed=4).take(EVENTS - 1500))
    later: dict[int, Label] = {}
    for i, (x, y) in enumerate(stream):
        x = {k: float(v) for k, v in x.items()}
        label = Label(id=f"e{i}", label=bool(y))
        if i % 11 == 5 and i + 3 < len(stream):
            yield Label(id=f"e{i + 3}", label=bool(stream[i + 3][1]))  # early
        if i % 11 == 8 and i >= 3:
            yield Event(id=f"e{i}", features=x)  # its label came early
        elif i % 7 == 3:
            later[i + 40] = label
            yield Event(id=f"e{i}", features=x)
        else:
            yield Event(id=f"e{i}", features=x, label=label.label)
        if i in later:
            yield later.pop(i)
