"""Fixtures of the integration tests (helpers that are not fixtures: harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import OwnBroker, kill_leftover_workers


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    yield
    kill_leftover_workers()


@pytest.fixture
def own_broker() -> Iterator[OwnBroker]:
    """A broker of the test's own, which it may stop (the shared one stays up)."""
    broker = OwnBroker()
    broker.run("start")
    try:
        yield broker
    finally:
        broker.run("stop", "--delete")  # its data, config and log: nothing left on a dev clone
