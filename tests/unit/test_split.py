import json
import os
import subprocess
import sys

import pytest

from worker.core.split import BUCKETS, bucket, serves_challenger
from worker.errors import ConfigError

KEYS = [f"user-{i}" for i in range(2000)] + ["", "ü", "日本", "a" * 1000, "evt-42"]


def test_bucket_range_and_type():
    for k in KEYS:
        b = bucket(k)
        assert type(b) is int and 0 <= b < BUCKETS


def test_bucket_values_are_pinned():
    # Part of the contract: changing the hash reshuffles every entity between arms.
    assert bucket("user-42") == 598
    assert bucket("evt-42") == 924
    assert bucket("") == 9876
    assert bucket("über") == 6531


@pytest.mark.parametrize("seed", ["0", "1", "12345", "random"])
def test_sticky_across_processes_with_other_hash_seeds(seed):
    code = (
        "import json, sys\n"
        "from worker.core.split import bucket\n"
        "print(json.dumps([bucket(k) for k in json.load(sys.stdin)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(KEYS),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert json.loads(out) == [bucket(k) for k in KEYS]


@pytest.mark.parametrize("percent", [1.0, 5.0, 10.0, 25.0, 50.0, 90.0])
def test_roughly_uniform(percent):
    n = 100_000
    served = sum(serves_challenger(f"entity-{i}", percent, "unused") for i in range(n))
    assert abs(100 * served / n - percent) < 1.0


def test_buckets_uniform_chi_square():
    n = 100_000
    counts = [0] * 100
    for i in range(n):
        counts[bucket(f"k{i}") // 100] += 1
    expected = n / 100
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 150  # 99 dof: p ~ 0.0007 to exceed


def test_monotonic_in_percent():
    keys = [f"user-{i}" for i in range(20_000)]
    previous = set()
    for percent in [0, 0.5, 1, 5, 10, 20, 33.3, 50, 75, 99.99, 100]:
        served = {k for k in keys if serves_challenger(k, percent, "unused")}
        assert previous <= served  # served at a lower percent => still served
        previous = served
    assert len(previous) == len(keys)


def test_bounds():
    assert not any(serves_challenger(k, 0, "x") for k in KEYS)
    assert all(serves_challenger(k, 100, "x") for k in KEYS)
    assert isinstance(serves_challenger("a", 50, "x"), bool)


def test_float_noise_does_not_add_a_bucket():
    # 1.1 * 100 == 110.00000000000001: must serve exactly buckets 0..109
    key = next(f"k{i}" for i in range(10**6) if bucket(f"k{i}") == 110)
    assert not serves_challenger(key, 1.1, "x")
    assert serves_challenger(key, 1.11, "x")


def test_missing_key_falls_back_to_event_id():
    for fid in ["evt-1", "evt-2", "evt-3"]:
        assert serves_challenger(None, 30, fid) == (bucket(fid) < 3000)
        assert serves_challenger("", 30, fid) == (bucket(fid) < 3000)
    # a key wins over the fallback
    assert serves_challenger("user-42", 6, "whatever") is True
    assert serves_challenger("user-42", 5, "whatever") is False


@pytest.mark.parametrize("percent", [-0.1, 100.1, float("nan"), float("inf"), "50", None, True])
def test_bad_percent(percent):
    with pytest.raises(ConfigError):
        serves_challenger("a", percent, "x")
