"""A snapshot written by an older release restores, and the engine then goes on exactly as
one that ran the whole stream: a rolling upgrade keeps the state (ARCHITECTURE.md §5).

The fixture was made by worker 0.1.0 at commit e8d67cf (tests/fixtures/make_old_snapshot.py)
in the middle of a probation, with predictions waiting for labels and an early label
waiting for its event. Its metrics, test and detector objects have the old layout.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from tests.unit import compat_stream as stream
from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import Event

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "snapshot-0.1.0-e8d67cf.bin"


def feed(engine: Engine, messages) -> list:
    out = []
    for message in messages:
        if isinstance(message, Event):
            out.append(dataclasses.astuple(engine.process(message)))
        else:
            engine.process_label(message)
        out += [(e.type, e.champion, e.challenger, e.labelled) for e in engine.take_lifecycle()]
    return out


def same(a, b, path="") -> None:
    """Equal, floats up to rounding: the fading view now sums its cells in another order."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) and math.isnan(b)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_snapshot_of_release_0_1_0_restores_and_goes_on_like_an_uninterrupted_run():
    messages = list(stream.messages())
    reference = Engine(EngineConfig(champion=stream.CHAMPION))
    feed(reference, messages[:stream.SNAPSHOT_AT])

    restored = Engine.restore(FIXTURE.read_bytes(), stream.SECRET)
    before = restored.status()
    assert (before["champion"], before["challenger"], before["previous"]) == (3, 4, 2)  # in probation
    assert before["pending"]["predictions"] == 5 and before["pending"]["labels"] == 1
    same(before, reference.status())

    rest = messages[stream.SNAPSHOT_AT:]
    assert feed(restored, rest) == feed(reference, rest)
    after = restored.status()
    assert after["counts"]["promotions"] > before["counts"]["promotions"]  # decisions went on too
    same(after, reference.status())
