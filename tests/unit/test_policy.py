"""Tests of worker.core.policy: the paired sequential test and the decision rules.

The statistical tests simulate paired 0/1 loss streams with ``random.Random(seed)``
(one uniform draw per event, mapped to the four (incumbent, candidate) outcomes of two
independent Bernoulli errors), peek at ``rejected`` after every event, and compare the
fraction of streams that ever reject with a binomial bound. Seeds are fixed, so the
outcomes are deterministic; the bounds say why they are not luck.

Measured on the 2-core dev machine (seeds below):
- H0, both errors 0.3, margin 0: 24 / 2000 streams of 2000 events ever reject (1.2 %).
- H0 boundary, errors 0.3 vs 0.25, margin 0.05: 11 / 1000 (1.1 %).
- naive one-sided McNemar (alpha 0.05) checked after every event on the first 300 of the
  same null streams: ~30 % reject.
- power, errors 0.3 vs 0.2: 200 / 200 reject; median 296 events, 95th percentile 752.
- candidate worse (0.2 vs 0.3): 0 / 200.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import random
import statistics

import pytest

from worker.core.policy import (
    E_VALUE_DISPLAY_CAP,
    PairedTest,
    PolicyConfig,
    Verdict,
    decide_promotion,
    decide_rollback,
    should_reset_on_drift,
    zero_one_loss,
)
from worker.errors import ConfigError

ALPHA = 0.05


def binomial_upper(n_runs: int, p: float) -> float:
    """Mean + 3 standard deviations of Binomial(n_runs, p)."""
    return n_runs * p + 3.0 * math.sqrt(n_runs * p * (1.0 - p))


def draw(rng: random.Random, p_inc: float, p_cand: float) -> tuple[float, float]:
    """One paired 0/1 loss with independent errors of rates p_inc and p_cand."""
    u = rng.random()
    a = p_inc * (1.0 - p_cand)  # incumbent wrong, candidate right
    b = a + (1.0 - p_inc) * p_cand  # incumbent right, candidate wrong
    c = b + p_inc * p_cand  # both wrong
    if u < a:
        return 1.0, 0.0
    if u < b:
        return 0.0, 1.0
    if u < c:
        return 1.0, 1.0
    return 0.0, 0.0


def first_rejection(seed: int, length: int, p_inc: float, p_cand: float, margin: float = 0.0) -> int | None:
    """Feed one stream, peeking after every event; n at the first rejection or None."""
    rng = random.Random(seed)
    t = PairedTest(alpha=ALPHA, margin=margin)
    for _ in range(length):
        t.update(*draw(rng, p_inc, p_cand))
        if t.rejected:
            assert t.first_rejection_n == t.n
            return t.n
    assert t.first_rejection_n is None
    return None


def brute_force_log_e(pairs, margin: float, grid_size: int = 10) -> float:
    lam_max = 0.5 / (1.0 + margin)
    lambdas = [lam_max * 0.5**k for k in range(grid_size)]
    wealth = [math.prod(1.0 + lam * (li - lc - margin) for li, lc in pairs) for lam in lambdas]
    return math.log(sum(wealth) / grid_size)


# -- the sequential test: statistics -------------------------------------------------


@pytest.mark.slow
def test_null_equal_error_rates_ever_rejects_at_most_alpha():
    # H0 with margin 0: both models wrong independently with probability 0.3.
    # Ville: P(ever reject) <= alpha, so the count of rejecting streams is stochastically
    # below Binomial(N, alpha); allow mean + 3 sd: 100 + 3*9.75 = 129.2 of 2000.
    n_runs, length = 2000, 2000
    hits = [first_rejection(10_000 + r, length, 0.3, 0.3) for r in range(n_runs)]
    count = sum(h is not None for h in hits)
    assert count <= binomial_upper(n_runs, ALPHA), count
    # measured: 24 / 2000 = 1.2 % (the bound is conservative, as Ville's inequality is)


@pytest.mark.slow
def test_null_boundary_with_margin_ever_rejects_at_most_alpha():
    # Candidate better by exactly the margin: E[D] = 0.3*0.75 - 0.7*0.25 = 0.05 = margin.
    # Bound: 50 + 3*6.89 = 70.7 of 1000.
    n_runs, length, margin = 1000, 2000, 0.05
    hits = [first_rejection(20_000 + r, length, 0.3, 0.25, margin) for r in range(n_runs)]
    count = sum(h is not None for h in hits)
    assert count <= binomial_upper(n_runs, ALPHA), count
    # measured: 11 / 1000 = 1.1 %


@pytest.mark.slow
def test_null_continuous_losses_ever_rejects_at_most_alpha():
    # Non-0/1 losses take the generic log1p path: losses uniform on [0, 1] (equal means).
    n_runs, length = 300, 1000
    count = 0
    for r in range(n_runs):
        rng = random.Random(30_000 + r)
        t = PairedTest(alpha=ALPHA)
        for _ in range(length):
            t.update(rng.random(), rng.random())
            if t.rejected:
                count += 1
                break
    assert count <= binomial_upper(n_runs, ALPHA), count


@pytest.mark.slow
def test_naive_mcnemar_checked_every_event_inflates_false_promotions():
    # Why the e-process: a one-sided McNemar at level alpha (continuity-corrected
    # chi2 >= 2.706, i.e. z >= 1.645, and b > a), looked at after every event, on the
    # first 300 of the same null streams as above, rejects far more often than alpha.
    n_runs, length = 300, 2000
    crit = 1.6448536269514722**2
    naive = 0
    for r in range(n_runs):
        rng = random.Random(10_000 + r)
        a = b = 0  # a: incumbent right / candidate wrong; b: the reverse
        for _ in range(length):
            li, lc = draw(rng, 0.3, 0.3)
            if li > lc:
                b += 1
            elif lc > li:
                a += 1
            if b > a and (abs(a - b) - 1) ** 2 / (a + b) >= crit:
                naive += 1
                break
    e_process = sum(first_rejection(10_000 + r, length, 0.3, 0.3) is not None for r in range(n_runs))
    assert naive / n_runs > 3 * ALPHA, naive  # measured: ~30 %
    assert e_process <= binomial_upper(n_runs, ALPHA)
    assert naive > 5 * e_process


@pytest.mark.slow
def test_power_candidate_better():
    # Incumbent error 0.3, candidate 0.2 (E[D] = 0.1, Var(D) ~ 0.37).
    n_runs = 200
    hits = [first_rejection(40_000 + r, 2000, 0.3, 0.2) for r in range(n_runs)]
    found = [h for h in hits if h is not None]
    assert len(found) >= 0.95 * n_runs, len(found)
    median = statistics.median(found)
    assert 100 <= median <= 1000, median  # measured: median 296, 95th percentile 752


@pytest.mark.slow
def test_candidate_worse_never_rejects():
    # E[D] = -0.1: the wealth of every bet drifts down; the probability of ever
    # crossing 1/alpha is far below alpha, and none of these seeded runs does.
    n_runs = 200
    hits = [first_rejection(50_000 + r, 2000, 0.2, 0.3) for r in range(n_runs)]
    assert sum(h is not None for h in hits) == 0


# -- the sequential test: mechanics -------------------------------------------------


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.3])
def test_log_e_value_matches_brute_force_product(margin):
    rng = random.Random(7)
    pairs = [draw(rng, 0.4, 0.3) for _ in range(150)]
    pairs += [(rng.random(), rng.random()) for _ in range(50)]
    pairs += [(0.25, 0.75), (1.0, 1.0), (0.0, 0.0), (0.5, 0.5)]
    t = PairedTest(margin=margin)
    for li, lc in pairs:
        t.update(li, lc)
    assert t.log_e_value == pytest.approx(brute_force_log_e(pairs, margin), rel=1e-12, abs=1e-12)
    assert t.n == len(pairs)
    assert t.mean_diff == pytest.approx(sum(li - lc for li, lc in pairs) / len(pairs))


def test_fresh_test_is_neutral():
    t = PairedTest()
    assert t.n == 0
    assert t.log_e_value == 0.0
    assert t.e_value == 1.0
    assert t.mean_diff == 0.0
    assert not t.rejected
    assert not t.ever_rejected


def test_ties_with_zero_margin_leave_the_evidence_unchanged():
    t = PairedTest()
    for _ in range(50):
        t.update(1, 0)
    before = t.log_e_value
    for _ in range(1000):
        t.update(1, 1)
        t.update(0, 0)
    assert t.log_e_value == before
    assert (t.candidate_better, t.incumbent_better, t.n) == (50, 0, 2050)


def test_ties_with_positive_margin_count_against_the_candidate():
    t = PairedTest(margin=0.1)
    for _ in range(100):
        t.update(0, 0)
    assert t.log_e_value < 0.0


def test_discordant_counts_and_mean_diff():
    t = PairedTest()
    for li, lc in [(1, 0), (1, 0), (0, 1), (1, 1), (0, 0), (0.75, 0.25)]:
        t.update(li, lc)
    assert t.candidate_better == 3
    assert t.incumbent_better == 1
    assert t.mean_diff == pytest.approx((1 + 1 - 1 + 0.5) / 6)


def test_rejected_is_current_and_ever_rejected_is_sticky():
    t = PairedTest()
    while not t.rejected:
        t.update(1, 0)
    first = t.n
    assert t.first_rejection_n == first
    while t.rejected:
        t.update(0, 1)
    assert not t.rejected
    assert t.ever_rejected and t.first_rejection_n == first


def test_e_value_is_capped_for_display_but_log_is_not():
    t = PairedTest()
    for _ in range(500):
        t.update(1, 0)
    assert t.log_e_value > math.log(E_VALUE_DISPLAY_CAP)
    assert t.e_value == E_VALUE_DISPLAY_CAP
    s = t.summary()
    assert math.isfinite(s["e_value"]) and s["e_value"] == E_VALUE_DISPLAY_CAP


def test_long_null_stream_stays_finite():
    t = PairedTest(margin=0.2)
    for _ in range(100_000):
        t.update(0, 1)
    assert math.isfinite(t.log_e_value)
    assert t.e_value >= 0.0
    assert not t.rejected


def test_summary_is_json_friendly():
    t = PairedTest(alpha=0.01, margin=0.02)
    rng = random.Random(3)
    for _ in range(300):
        t.update(*draw(rng, 0.3, 0.2))
    s = t.summary()
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    assert s["threshold"] == pytest.approx(100.0)
    assert s["alpha"] == 0.01 and s["margin"] == 0.02 and s["n"] == 300
    for key in ("e_value", "log_e_value", "mean_diff", "rejected"):
        assert key in s


def test_pickle_round_trip_continues_identically():
    rng = random.Random(11)
    pairs = [draw(rng, 0.3, 0.22) for _ in range(400)] + [(rng.random(), rng.random()) for _ in range(100)]
    a = PairedTest(margin=0.01)
    for p in pairs[:250]:
        a.update(*p)
    assert math.isfinite(a.log_e_value)  # fills the cache before pickling
    b = pickle.loads(pickle.dumps(a))
    c = copy.deepcopy(a)
    assert b.summary() == a.summary() == c.summary()
    for p in pairs[250:]:
        a.update(*p)
        b.update(*p)
        c.update(*p)
        assert b.log_e_value == a.log_e_value == c.log_e_value
        assert b.rejected == a.rejected
    assert b.summary() == a.summary() == c.summary()
    assert b.__getstate__() == a.__getstate__()


def test_deterministic():
    def run():
        rng = random.Random(5)
        t = PairedTest()
        out = []
        for _ in range(1000):
            t.update(*draw(rng, 0.3, 0.25))
            out.append(t.log_e_value)
        return out, t.summary()

    assert run() == run()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_rejects_losses_outside_unit_interval(bad):
    t = PairedTest()
    with pytest.raises(ValueError):
        t.update(bad, 0.0)
    with pytest.raises(ValueError):
        t.update(0.0, bad)
    assert t.n == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"alpha": 0.0}, {"alpha": 1.0}, {"margin": -0.1}, {"margin": 1.0}, {"grid_size": 0}],
)
def test_invalid_test_parameters(kwargs):
    with pytest.raises(ConfigError):
        PairedTest(**kwargs)


def test_zero_one_loss():
    assert zero_one_loss(1, 1) == 0.0
    assert zero_one_loss("a", "b") == 1.0
    assert zero_one_loss(True, None) == 1.0


# -- configuration ---------------------------------------------------------------------


def test_policy_config_defaults():
    c = PolicyConfig()
    assert (c.alpha, c.margin, c.min_labels, c.max_labels) == (0.05, 0.0, 100, 20000)
    assert (c.cooldown, c.probation, c.grace, c.loss) == (100, 1000, 300, "zero_one")
    t = c.new_test()
    assert (t.alpha, t.margin, t.n) == (0.05, 0.0, 0)
    with pytest.raises(AttributeError):
        c.alpha = 0.1  # frozen


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"margin": -0.01},
        {"min_labels": -1},
        {"cooldown": 1.5},
        {"probation": True},
        {"min_labels": 300, "max_labels": 200},
        {"loss": "log"},
    ],
)
def test_policy_config_validation(kwargs):
    with pytest.raises(ConfigError):
        PolicyConfig(**kwargs)


# -- decision rules ----------------------------------------------------------------------

CFG = PolicyConfig(min_labels=200, cooldown=500)  # explicit: the rule tests use these counts


def strong_test(n: int = 300) -> PairedTest:
    """A test that rejects: the candidate right on every event the incumbent got wrong."""
    t = PairedTest()
    for i in range(n):
        t.update(float(i % 2 == 0), 0.0)
    assert t.rejected
    return t


def weak_test(n: int = 300) -> PairedTest:
    t = PairedTest()
    for i in range(n):
        t.update(float(i % 2 == 0), float(i % 2 == 0))
    assert not t.rejected
    return t


def promo(test, *, created=1000, drift=False, since_transition=1000, config=CFG) -> Verdict:
    return decide_promotion(
        labels_since_created=created,
        test=test,
        challenger_drift_active=drift,
        labels_since_transition=since_transition,
        config=config,
    )


def test_promote_when_every_condition_holds():
    t = strong_test()
    v = promo(t)
    assert v.outcome == "promote"
    assert v.statistic == t.summary()
    assert "e=" in v.reason


def test_promote_at_the_exact_boundaries():
    v = promo(strong_test(), created=CFG.min_labels, since_transition=CFG.cooldown)
    assert v.outcome == "promote"


def test_keep_before_min_labels():
    v = promo(strong_test(), created=120)
    assert v.outcome == "keep"
    assert "min_labels: 120/200" in v.reason


def test_keep_during_cooldown():
    v = promo(strong_test(), since_transition=499)
    assert v.outcome == "keep"
    assert "cooldown" in v.reason


def test_keep_while_challenger_drift_alarm():
    v = promo(strong_test(), drift=True)
    assert v.outcome == "keep"
    assert "drift alarm on challenger" in v.reason


def test_keep_without_evidence():
    v = promo(weak_test())
    assert v.outcome == "keep"
    assert v.reason.startswith("evidence e=1 < 20")


def test_keep_reason_lists_everything_missing():
    v = promo(weak_test(), created=120, drift=True, since_transition=10)
    assert v.outcome == "keep"
    for part in ("min_labels: 120/200", "cooldown: 10/500", "drift alarm", "evidence"):
        assert part in v.reason


def test_inconclusive_at_max_labels():
    v = promo(weak_test(), created=CFG.max_labels)
    assert v.outcome == "inconclusive"
    assert "max_labels" in v.reason and "evidence" in v.reason
    # drift alarm or cooldown at max_labels is inconclusive as well
    assert promo(strong_test(), created=CFG.max_labels, drift=True).outcome == "inconclusive"
    assert promo(weak_test(), created=CFG.max_labels - 1).outcome == "keep"


def test_promote_wins_over_inconclusive_at_max_labels():
    assert promo(strong_test(), created=CFG.max_labels + 5).outcome == "promote"


def test_rollback_during_probation_when_previous_champion_is_better():
    # incumbent = new champion, candidate = previous champion
    t = strong_test()
    v = decide_rollback(labels_since_promotion=300, test=t, config=CFG)
    assert v.outcome == "rollback"
    assert v.statistic == t.summary()


def test_keep_during_probation_without_evidence():
    v = decide_rollback(labels_since_promotion=300, test=weak_test(), config=CFG)
    assert v.outcome == "keep"
    assert "probation: 300/1000" in v.reason


def test_end_probation():
    for t in (weak_test(), strong_test()):
        v = decide_rollback(labels_since_promotion=CFG.probation, test=t, config=CFG)
        assert v.outcome == "end_probation"
    v = decide_rollback(labels_since_promotion=CFG.probation - 1, test=strong_test(), config=CFG)
    assert v.outcome == "rollback"


def test_probation_ends_early_once_the_new_champion_is_shown_better():
    # confirmation: incumbent = previous champion, candidate = new champion
    confirmation = strong_test()
    v = decide_rollback(labels_since_promotion=300, test=weak_test(), config=CFG, confirmation=confirmation)
    assert v.outcome == "end_probation"
    assert v.reason.startswith("new champion better: evidence e=") and "after " in v.reason
    v = decide_rollback(labels_since_promotion=300, test=weak_test(), config=CFG, confirmation=weak_test())
    assert v.outcome == "keep"


def test_should_reset_on_drift():
    g = CFG.grace
    assert should_reset_on_drift(labels_since_created=g, error_before=0.2, error_after=0.3, config=CFG)
    # within the grace period
    assert not should_reset_on_drift(
        labels_since_created=g - 1, error_before=0.2, error_after=0.9, config=CFG
    )
    # the learner improved (or stayed level): the alarm is not a reason to reset
    assert not should_reset_on_drift(labels_since_created=5000, error_before=0.3, error_after=0.2, config=CFG)
    assert not should_reset_on_drift(labels_since_created=5000, error_before=0.3, error_after=0.3, config=CFG)
    assert not should_reset_on_drift(
        labels_since_created=5000, error_before=0.3, error_after=float("nan"), config=CFG
    )


def test_verdict_is_frozen():
    v = promo(weak_test())
    with pytest.raises(AttributeError):
        v.outcome = "promote"
