"""What a trainer (`--role trainer`) publishes on `models` for its scorers, step by step.

The handler and the engine are driven directly (no worker process), against the real
broker, through a lifecycle that the process-level tests reach only by chance or slowly:
a paused learner, a split set again, a reset, a promotion, a rollback.
"""

from __future__ import annotations

import orjson
from confluent_kafka import Producer

from tests.integration.harness import create_all_topics, read_all
from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.types import Command, Event
from worker.io.codec import Limits
from worker.runtime.handler import Handler
from worker.settings import TopicNames


def labelled(engine: Engine, first: int, last: int) -> None:
    for i in range(first, last):
        x = {"a": (i * 37 % 101) / 101, "b": (i * 53 % 97) / 97}
        engine.process(Event(id=f"e{i}", features=x, label=x["a"] > x["b"], key=f"user-{i % 50}"))


def test_a_trainer_publishes_what_serves_while_it_learns_and_settles_it(bootstrap, unique):
    prefix = unique("publication") + "."
    create_all_topics(bootstrap, prefix, 1)
    topics = TopicNames.from_prefix(prefix)
    producer = Producer({"bootstrap.servers": bootstrap})
    engine = Engine(EngineConfig(warmup_labels=50, policy="manual"))
    trainer = Handler(engine, producer, topics, limits=Limits(), secrets=(b"s3cret",),
                      require_signed_commands=False, serve=False)

    commands = iter(range(100))

    def command(kind: str, **fields) -> None:
        engine.apply(Command(type=kind, command_id=f"c{next(commands)}", **fields))
        trainer.flush(emit=True)  # as Handler.handle does after a control message

    def publish(interval_passed: bool) -> list[int]:
        due = trainer.learners_due(interval_passed)
        trainer.publish_learners(due)
        return due

    assert publish(False) == [1], "version 1 at once, in its warm-up"
    labelled(engine, 0, 20)
    assert publish(False) == [] and publish(True) == [1], "again once the interval passed"
    assert publish(True) == [], "not again before it learned"
    labelled(engine, 20, 60)  # the 50th label ends the warm-up: v1 frozen, challenger v2
    trainer.flush(emit=True)
    assert publish(True) == [], "a frozen champion and no split: nothing learns and serves"

    command("set_split", percent=50.0)
    assert publish(False) == [2], "the challenger at once under a split"
    command("pause_learning")
    labelled(engine, 60, 80)
    assert publish(True) == [], "paused: it did not learn"
    command("resume_learning")
    command("set_split", percent=0.0)
    labelled(engine, 80, 100)
    assert publish(True) == []
    command("set_split", percent=30.0)
    assert publish(False) == [2], "served again: at once, not after an interval"

    command("reset_challenger")  # v2 replaced by v3: v2 leaves the topic
    assert publish(False) == [3]
    command("promote")  # v3 champion, settled; v4 the new challenger
    assert publish(False) == [4]
    command("rollback")  # back to v1
    producer.flush(30)

    latest: dict[int, dict | None] = {}
    for msg in read_all(bootstrap, topics.models):
        if b"/" not in msg.key():
            latest[int(msg.key()[1:])] = None if msg.value() is None else orjson.loads(msg.value())
    assert latest[2] is None, "the replaced challenger was pruned"
    assert "learning" not in latest[1] and latest[1]["learned"] == 50, "v1 settled at its warm-up's end"
    assert "learning" not in latest[3], "v3 settled when promoted"
    assert latest[4]["learning"] is True, "v4, the challenger, still learns"
    assert engine.champion == 1 and engine.challenger == 4
