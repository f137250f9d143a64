"""A signed command logged long after it was signed is refused as a replay (worker.io.freshness)."""

from __future__ import annotations

import math

import pytest

from worker.io.freshness import stale_command


@pytest.mark.parametrize("age", [0.0, 12.5, 299.9, 300.0, -300.0, -42.0])
def test_a_command_logged_within_the_max_age_of_its_signing_is_accepted(age):
    assert stale_command({"ts": 1_764_160_000.0}, logged_at_s=1_764_160_000.0 + age, max_age_s=300) is None


@pytest.mark.parametrize("age", [300.5, 3600.0, 86_400.0 * 30])
def test_a_copy_written_later_is_refused_and_the_reason_says_how_late(age):
    reason = stale_command({"ts": 1_764_160_000.0}, logged_at_s=1_764_160_000.0 + age, max_age_s=300)
    assert reason is not None and reason.startswith("stale: signed ")
    assert f"{age:.0f} s before the broker logged it" in reason


def test_a_command_signed_far_ahead_of_the_broker_clock_is_refused():
    reason = stale_command({"ts": 2_000_000_000}, logged_at_s=1_764_160_000.0, max_age_s=300)
    assert reason is not None and "after the broker logged it" in reason and "clock is wrong" in reason


@pytest.mark.parametrize("ts", [None, "1764160000", True, math.nan, math.inf, [1.0]])
def test_a_signed_command_without_a_usable_ts_is_refused(ts):
    raw = {"type": "promote"} if ts is None else {"type": "promote", "ts": ts}
    reason = stale_command(raw, logged_at_s=1_764_160_000.0, max_age_s=300)
    assert reason is not None and '"ts"' in reason


def test_zero_max_age_or_no_broker_timestamp_checks_nothing():
    assert stale_command({"ts": 0.0}, logged_at_s=1_764_160_000.0, max_age_s=0) is None
    assert stale_command({}, logged_at_s=None, max_age_s=300) is None


def test_a_ts_in_milliseconds_is_refused_with_a_hint():
    reason = stale_command({"ts": 1_764_160_000_000}, logged_at_s=1_764_160_000.0, max_age_s=300)
    assert reason is not None and "seconds, not milliseconds" in reason
