import pickle

import pytest

from worker.core.pending import PendingBuffer
from worker.errors import BadInputError, ConfigError, DuplicateIdError


def test_put_pop_contains_len():
    buf = PendingBuffer(max_items=10, max_age=100)
    assert buf.put("a", {"x": 1}, now=0) == []
    assert "a" in buf and "b" not in buf
    assert len(buf) == 1
    assert buf.pop("a") == {"x": 1}
    assert "a" not in buf and len(buf) == 0
    assert buf.pop("a") is None  # already matched
    assert buf.pop("never") is None
    assert buf.matched == 1


def test_duplicate_id_is_refused_and_counted():
    buf = PendingBuffer(max_items=10)
    buf.put("a", 1, now=0)
    with pytest.raises(DuplicateIdError, match="'a'"):
        buf.put("a", 2, now=1)
    assert issubclass(DuplicateIdError, BadInputError)  # dead-lettered like bad input
    assert buf.duplicates == 1
    assert buf.pop("a") == 1  # the first one stays
    buf.put("a", 3, now=2)  # no longer pending: accepted again
    assert buf.pop("a") == 3


def test_capacity_evicts_oldest_first_and_put_returns_them():
    buf = PendingBuffer(max_items=3)
    for i in range(3):
        assert buf.put(f"e{i}", i, now=i) == []
    assert buf.put("e3", 3, now=3) == [("e0", 0)]
    assert buf.put("e4", 4, now=4) == [("e1", 1)]
    assert len(buf) == 3
    assert buf.evicted_capacity == 2
    assert [i for i in ("e0", "e1", "e2", "e3", "e4") if i in buf] == ["e2", "e3", "e4"]


def test_capacity_one():
    buf = PendingBuffer(max_items=1)
    buf.put("a", 1, now=0)
    assert buf.put("b", 2, now=0) == [("a", 1)]
    assert len(buf) == 1 and "b" in buf


def test_pop_frees_room():
    buf = PendingBuffer(max_items=2)
    buf.put("a", 1, now=0)
    buf.put("b", 2, now=0)
    buf.pop("a")
    assert buf.put("c", 3, now=0) == []
    assert buf.evicted_capacity == 0


def test_expire_by_age_strictly_older():
    buf = PendingBuffer(max_items=100, max_age=10)
    buf.put("a", "A", now=0)
    buf.put("b", "B", now=5)
    buf.put("c", "C", now=8)
    assert buf.expire(now=10) == []  # age 10 is not > 10
    assert buf.expire(now=15.5) == [("a", "A"), ("b", "B")]
    assert list(x for x in "abc" if x in buf) == ["c"]
    assert buf.evicted_age == 2
    assert buf.expire(now=100) == [("c", "C")]
    assert buf.expire(now=1000) == []
    assert buf.evicted_age == 3


def test_expire_without_max_age_keeps_everything():
    buf = PendingBuffer(max_items=5)
    buf.put("a", 1, now=0)
    assert buf.expire(now=10**12) == []
    assert "a" in buf


def test_expire_with_event_counter_clock():
    # without ts the caller ages entries by event count
    buf = PendingBuffer(max_items=1000, max_age=3)
    expired = []
    for n in range(10):
        expired += buf.expire(now=n)
        buf.put(f"e{n}", n, now=n)
    assert [i for i, _ in expired] == [f"e{n}" for n in range(6)]
    assert len(buf) == 4


def test_out_of_order_ts_is_approximate_but_bounded():
    buf = PendingBuffer(max_items=100, max_age=10)
    buf.put("young", 1, now=50)  # front entry is young
    buf.put("old", 2, now=0)  # late event: old, but behind a young one
    # "old" is too old but stuck behind "young": expire stops at the front
    assert buf.expire(now=55) == []
    assert "old" in buf
    # once the front goes, the stuck entry goes with it, still counted
    assert buf.expire(now=61) == [("young", 1), ("old", 2)]
    assert buf.evicted_age == 2


def test_clock_going_backwards_expires_nothing():
    buf = PendingBuffer(max_items=10, max_age=1)
    buf.put("a", 1, now=100)
    assert buf.expire(now=0) == []
    assert "a" in buf


def test_counters_and_repr():
    buf = PendingBuffer(max_items=1, max_age=1)
    buf.put("a", 1, now=0)
    buf.put("b", 1, now=0)
    with pytest.raises(DuplicateIdError):
        buf.put("b", 1, now=0)
    buf.expire(now=5)
    buf.put("c", 1, now=5)
    buf.pop("c")
    assert buf.counters() == {
        "matched": 1,
        "duplicates": 1,
        "evicted_capacity": 1,
        "evicted_age": 1,
    }
    assert "pending=0" in repr(buf)


def test_pickle_round_trip_keeps_order_and_counters():
    buf = PendingBuffer(max_items=3, max_age=10)
    for i in range(5):
        buf.put(f"e{i}", {"i": i}, now=i)
    clone = pickle.loads(pickle.dumps(buf, protocol=5))
    assert clone.counters() == buf.counters()
    assert len(clone) == 3
    # same future behaviour: evicts in the same order
    assert clone.put("e5", 5, now=5) == buf.put("e5", 5, now=5) == [("e2", {"i": 2})]
    assert clone.expire(now=14) == buf.expire(now=14) == [("e3", {"i": 3})]


def test_deterministic():
    def run():
        buf = PendingBuffer(max_items=50, max_age=20)
        log = []
        for n in range(500):
            log += buf.expire(now=n)
            key = f"id{(n * 7919) % 1000}"
            if key not in buf:
                log += buf.put(key, n, now=n)
            if n % 3 == 0:
                buf.pop(f"id{((n - 5) * 7919) % 1000}")
        return log, buf.counters(), pickle.dumps(buf)

    assert run() == run()


@pytest.mark.parametrize("max_items", [0, -1, 1.5, True, None])
def test_bad_max_items(max_items):
    with pytest.raises(ConfigError):
        PendingBuffer(max_items=max_items)


@pytest.mark.parametrize("max_age", [-1, float("nan"), float("inf"), "10", True])
def test_bad_max_age(max_age):
    with pytest.raises(ConfigError):
        PendingBuffer(max_items=1, max_age=max_age)
