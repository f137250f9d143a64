"""Shared pytest set-up: integration tests get a real Kafka broker.

The broker is the one `WORKER_TEST_BOOTSTRAP` names (scripts/test sets it), else the
local one that `scripts/kafka-local` runs on the default port — started here once per
session if it is not running, and stopped at the end only if this session started it
(not in parallel runs, `pytest -n`: there the broker must be named).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def _kafka_local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(KAFKA_LOCAL), *args], capture_output=True, text=True
    )


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """host:port of a real Kafka broker for this test session."""
    given = os.environ.get("WORKER_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each process would start and stop its own
        raise RuntimeError("with pytest -n, name a running broker in WORKER_TEST_BOOTSTRAP "
                           "(scripts/test does), e.g. after scripts/kafka-local start")
    already = _kafka_local("status").returncode == 0
    if not already:
        started = _kafka_local("start")
        if started.returncode != 0:
            raise RuntimeError(f"could not start the local Kafka broker:\n{started.stderr}")
    try:
        yield "127.0.0.1:9092"
    finally:
        if not already:
            _kafka_local("stop")


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names that no other test uses, so tests never see each other's data."""
    run = uuid.uuid4().hex[:10]
    return lambda name: f"t-{run}-{name}"


@pytest.fixture
def create_topic(bootstrap: str) -> Callable[..., str]:
    """Create a topic (and wait until it exists); returns its name."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def create(name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=30,
        )
        futures[name].result(timeout=30)
        deadline = time.monotonic() + 30
        def visible() -> bool:  # metadata, and the partitions' leaders, lag a little
            partitions = admin.list_topics(name, timeout=10).topics[name].partitions
            return bool(partitions) and all(p.leader >= 0 for p in partitions.values())

        while not visible():
            assert time.monotonic() < deadline, f"topic {name} not visible in metadata"
            time.sleep(0.1)
        return name

    return create
