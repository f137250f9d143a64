"""Sequential tests and the promote / rollback decision (ARCHITECTURE.md §3).

Two parts:

* :class:`PairedTest` — an always-valid one-sided sequential test on the *paired*
  per-event losses of two models scored on the same labelled events;
* :func:`decide_promotion`, :func:`decide_rollback`, :func:`should_reset_on_drift` —
  small pure functions that turn counters, the test and the drift state into a
  :class:`Verdict`. They hold no state: the engine owns the counters.

Why not McNemar (or any fixed-n test)?
    McNemar's test is calibrated for *one* look at a sample size fixed in advance.
    The engine consults the policy after every labelled event and promotes at the
    first rejection; with a fixed-n test that is "test until it says yes", and the
    probability that a challenger no better than the champion is *ever* promoted
    tends to 1 as the stream grows (law of the iterated logarithm). In this repo's
    tests, a one-sided McNemar at level 0.05 checked after each of 2,000 null events
    rejects in about 30 % of the streams, not 5 %.

Why the betting e-process is valid under continuous monitoring
    Let ``D_i = loss_incumbent_i - loss_candidate_i`` in [-1, 1] and
    H0: ``E[D_i | past] <= margin`` for every i. For a fixed ``lam`` in
    ``[0, 1/(1+margin))`` the wealth ``K_n(lam) = prod_i (1 + lam*(D_i - margin))``
    is positive (each factor is >= ``1 - lam*(1+margin) > 0``) and, under H0,
    ``E[K_n | past] = K_{n-1} (1 + lam*(E[D_n | past] - margin)) <= K_{n-1}``: a
    nonnegative supermartingale with ``K_0 = 1`` (Shafer's "testing by betting";
    Waudby-Smith & Ramdas, "Estimating means of bounded random variables by
    betting", JRSS-B 2024). An equal-weight average of such wealth processes over a
    fixed grid of ``lam`` is again one (an e-process), and Ville's inequality gives
    ``P_H0(exists n: E_n >= 1/alpha) <= alpha``. So rejecting the first time (or any
    time) the mixture reaches ``1/alpha`` keeps the false-promotion probability of
    each challenger at most ``alpha``, however often it is checked, with no
    distributional assumption beyond boundedness (dependent, non-identically
    distributed losses are fine). Under an alternative ``E[D] = margin + delta`` the
    wealth of the ``lam`` closest to ``delta / Var(D)`` grows like
    ``exp(n * delta**2 / (2 Var(D)))``, so the evidence accumulates at a near-optimal
    rate without having to know ``delta`` in advance.

Example: the candidate is wrong on every 5th event, the incumbent on every 3rd.

>>> t = PairedTest(alpha=0.05)
>>> for i in range(1000):
...     t.update(float(i % 3 == 0), float(i % 5 == 0))
...     if t.rejected:
...         break
>>> t.n, round(t.mean_diff, 3), t.e_value >= 1 / t.alpha
(220, 0.136, True)
>>> s = t.summary()
>>> s["threshold"], s["candidate_better"], s["incumbent_better"]
(20.0, 59, 29)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import add
from typing import Any, Literal

from worker.errors import ConfigError

__all__ = [
    "E_VALUE_DISPLAY_CAP",
    "LOSSES",
    "PairedTest",
    "PolicyConfig",
    "Verdict",
    "decide_promotion",
    "decide_rollback",
    "should_reset_on_drift",
    "zero_one_loss",
]

#: ``e_value`` and ``summary()["e_value"]`` are capped here so they stay finite and
#: printable; ``log_e_value`` is never capped.
E_VALUE_DISPLAY_CAP = 1e12

#: Loss names the policy understands (``PolicyConfig.loss``).
LOSSES = frozenset({"zero_one"})

_LAMBDA_MAX_FRACTION = 0.5  # largest bet = 0.5 / (1 + margin): every factor >= 0.5
_LAMBDA_RATIO = 0.5  # geometric spacing of the grid


def zero_one_loss(y_true: Any, y_pred: Any) -> float:
    """0/1 loss: 1.0 when the prediction is wrong (a missing prediction, e.g. river's
    ``None`` from an untrained classifier, counts as wrong), else 0.0."""
    return 0.0 if y_pred is not None and y_pred == y_true else 1.0


def _check_loss(x: float, name: str) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {x!r}")
    return x


class PairedTest:
    """Always-valid one-sided test that the candidate's loss is lower by > ``margin``.

    H0: ``E[loss_incumbent - loss_candidate] <= margin``. The statistic is an
    equal-weight mixture, over ``grid_size`` bets ``lam_k = lam_max * 0.5**k`` with
    ``lam_max = 0.5 / (1 + margin)``, of the betting wealth
    ``prod_i (1 + lam_k * (D_i - margin))`` (see the module docstring for why this is
    valid when checked after every event). Log-wealth is kept per bet and combined by
    log-sum-exp, so nothing overflows or underflows. An update costs O(grid_size)
    float additions (0/1 losses use precomputed ``log1p`` terms); reading
    ``rejected`` is O(grid_size) and cached per ``n``.

    ``rejected`` is the current state (e-value >= ``1/alpha`` now), so a lead that
    evaporates stops counting; ``ever_rejected`` / ``first_rejection_n`` record the
    first crossing. Deciding on either one keeps the false-rejection probability
    <= ``alpha`` because both are contained in the event "the e-process ever
    crossed ``1/alpha``".

    For a rollback test pass the *new* champion as the incumbent and the previous
    champion as the candidate.

    The object is plain data (floats, ints, lists) — picklable, and deterministic:
    the same sequence of updates gives bit-identical results.
    """

    __slots__ = (
        "alpha",
        "margin",
        "grid_size",
        "lambdas",
        "n",
        "sum_diff",
        "candidate_better",
        "incumbent_better",
        "first_rejection_n",
        "_log_k",
        "_row_pos",
        "_row_zero",
        "_row_neg",
        "_log_threshold",
        "_log_grid",
        "_cache_n",
        "_cache_log_e",
        "_rejected",
    )

    def __init__(self, alpha: float = 0.05, margin: float = 0.0, grid_size: int = 10) -> None:
        if not 0.0 < alpha < 1.0:
            raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
        if not 0.0 <= margin < 1.0:
            raise ConfigError(f"margin must be in [0, 1), got {margin!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise ConfigError(f"grid_size must be a positive int, got {grid_size!r}")
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.grid_size = grid_size
        lam_max = _LAMBDA_MAX_FRACTION / (1.0 + self.margin)
        self.lambdas = tuple(lam_max * _LAMBDA_RATIO**k for k in range(grid_size))
        #: number of paired observations
        self.n = 0
        #: sum of D_i = loss_incumbent - loss_candidate
        self.sum_diff = 0.0
        #: events where the candidate's loss was lower (for 0/1 losses: the
        #: incumbent wrong, the candidate right — McNemar's "b")
        self.candidate_better = 0
        #: events where the incumbent's loss was lower (McNemar's "a")
        self.incumbent_better = 0
        #: ``n`` at the first time the e-value reached ``1/alpha``, else None
        self.first_rejection_n: int | None = None
        self._log_k = [0.0] * grid_size
        m = self.margin
        self._row_pos = [math.log1p(lam * (1.0 - m)) for lam in self.lambdas]
        self._row_zero = [math.log1p(-lam * m) for lam in self.lambdas]
        self._row_neg = [math.log1p(lam * (-1.0 - m)) for lam in self.lambdas]
        self._log_threshold = -math.log(self.alpha)
        self._log_grid = math.log(grid_size)
        self._cache_n = 0
        self._cache_log_e = 0.0
        self._rejected = False  # _crossed() after the last update that moved the wealth

    # -- updating ------------------------------------------------------------------

    def update(self, loss_incumbent: float, loss_candidate: float) -> None:
        """Add one paired observation; both losses must be in [0, 1]."""
        li, lc = loss_incumbent, loss_candidate
        if not (type(li) is int and 0 <= li <= 1):  # 0/1 losses (the engine's) need no check
            li = _check_loss(li, "loss_incumbent")
        if not (type(lc) is int and 0 <= lc <= 1):
            lc = _check_loss(lc, "loss_candidate")
        d = li - lc
        self.n += 1
        self.sum_diff += d
        if d > 0.0:
            self.candidate_better += 1
        elif d < 0.0:
            self.incumbent_better += 1
        if d == 1.0:
            self._log_k = list(map(add, self._log_k, self._row_pos))
        elif d == -1.0:
            self._log_k = list(map(add, self._log_k, self._row_neg))
        elif d == 0.0:
            if self.margin == 0.0:
                return  # a tie multiplies every wealth by 1: nothing else changes
            self._log_k = list(map(add, self._log_k, self._row_zero))
        else:
            x = d - self.margin
            self._log_k = [
                lk + math.log1p(lam * x) for lk, lam in zip(self._log_k, self.lambdas, strict=True)
            ]
        self._rejected = self._crossed()
        if self._rejected and self.first_rejection_n is None:
            self.first_rejection_n = self.n

    def mirrored(self) -> PairedTest:
        """The test of the same pairs with incumbent and candidate swapped, for 0/1 losses
        (the engine's). Their wealth depends only on how many pairs each side won and how
        many tied, so it is rebuilt from those counts (equal to the one updated pair by
        pair up to float rounding); ``first_rejection_n`` is unknown unless it rejects now.

        >>> t = PairedTest()
        >>> for i in range(300):
        ...     t.update(float(i % 5 == 0), float(i % 3 == 0))  # the candidate worse
        >>> m, direct = t.mirrored(), PairedTest()
        >>> for i in range(300):
        ...     direct.update(float(i % 3 == 0), float(i % 5 == 0))
        >>> m.rejected, direct.rejected, abs(m.log_e_value - direct.log_e_value) < 1e-9
        (True, True, True)
        """
        out = PairedTest(self.alpha, self.margin, self.grid_size)
        out.n, out.sum_diff = self.n, -self.sum_diff
        out.candidate_better, out.incumbent_better = self.incumbent_better, self.candidate_better
        ties = self.n - self.candidate_better - self.incumbent_better
        out._log_k = [out.candidate_better * pos + out.incumbent_better * neg + ties * zero
                      for pos, neg, zero in zip(out._row_pos, out._row_neg, out._row_zero, strict=True)]
        out._rejected = out.n > 0 and out._crossed()
        out.first_rejection_n = out.n if out._rejected else None
        return out

    # -- reading -------------------------------------------------------------------

    def _crossed(self) -> bool:
        """mixture >= 1/alpha, using mean <= max and mean >= max/grid to skip the
        log-sum-exp in the common cases."""
        top = max(self._log_k)
        if top < self._log_threshold:
            return False
        if top - self._log_grid >= self._log_threshold:
            return True
        return self.log_e_value >= self._log_threshold

    @property
    def log_e_value(self) -> float:
        """Natural log of the mixture e-value (0.0 before any observation)."""
        if self._cache_n != self.n:
            log_k = self._log_k
            top = max(log_k)
            total = math.fsum(math.exp(v - top) for v in log_k)
            self._cache_log_e = top + math.log(total) - self._log_grid
            self._cache_n = self.n
        return self._cache_log_e

    @property
    def e_value(self) -> float:
        """The mixture e-value, capped at :data:`E_VALUE_DISPLAY_CAP`."""
        log_e = self.log_e_value
        if log_e >= math.log(E_VALUE_DISPLAY_CAP):
            return E_VALUE_DISPLAY_CAP
        return math.exp(log_e)

    @property
    def threshold(self) -> float:
        """Rejection threshold ``1/alpha`` on the e-value."""
        return 1.0 / self.alpha

    @property
    def rejected(self) -> bool:
        """True when the e-value is at or above ``1/alpha`` now."""
        return self._rejected

    @property
    def ever_rejected(self) -> bool:
        """True once the e-value has reached ``1/alpha`` at some point."""
        return self.first_rejection_n is not None

    @property
    def mean_diff(self) -> float:
        """Mean of ``loss_incumbent - loss_candidate`` (> 0: candidate better)."""
        return self.sum_diff / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-friendly snapshot of the statistic (all finite floats, ints, bools)."""
        return {
            "test": "betting_e_process",
            "e_value": self.e_value,
            "log_e_value": self.log_e_value,
            "threshold": self.threshold,
            "rejected": self.rejected,
            "first_rejection_n": self.first_rejection_n,
            "n": self.n,
            "mean_diff": self.mean_diff,
            "candidate_better": self.candidate_better,
            "incumbent_better": self.incumbent_better,
            "alpha": self.alpha,
            "margin": self.margin,
        }

    # -- plumbing ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        if "_rejected" not in state:  # pickled by worker 0.1.0 (e8d67cf), before the cache
            self._rejected = self.n > 0 and self._crossed()

    def __repr__(self) -> str:
        return (
            f"PairedTest(alpha={self.alpha}, margin={self.margin}, n={self.n}, "
            f"e_value={self.e_value:.4g}, mean_diff={self.mean_diff:+.4f})"
        )


# -- the decision -------------------------------------------------------------------


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, got {value!r}")


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Promotion / rollback / drift-reset policy; every count is in labelled events.

    - ``alpha``: bound on the probability that a challenger whose expected loss is not
      lower than the champion's by more than ``margin`` is ever promoted (and, for
      rollback, that a not-worse new champion is ever rolled back).
    - ``min_labels``: labelled events since the challenger's creation before it may
      be promoted; ``max_labels``: at this many without a promotion it is
      inconclusive and is replaced.
    - ``cooldown``: after any transition (promotion, rollback, reset), no automatic
      promotion for this many labelled events.
    - ``probation``: after a promotion the previous champion keeps scoring in shadow
      for this many labelled events and may win a rollback (fewer, once the new
      champion is shown better: :func:`decide_rollback`).
    - ``grace``: drift alarms on a challenger younger than this do not reset it.
    - ``loss``: per-event loss fed to the tests; only ``"zero_one"`` for now.
    """

    alpha: float = 0.05
    margin: float = 0.0
    min_labels: int = 100
    max_labels: int = 20000
    cooldown: int = 100
    probation: int = 1000
    grace: int = 300
    loss: Literal["zero_one"] = "zero_one"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"margin must be in [0, 1), got {self.margin!r}")
        for name in ("min_labels", "max_labels", "cooldown", "probation", "grace"):
            _check_count(name, getattr(self, name))
        if self.max_labels < self.min_labels:
            raise ConfigError(f"max_labels ({self.max_labels}) must be >= min_labels ({self.min_labels})")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")

    def new_test(self) -> PairedTest:
        """A fresh :class:`PairedTest` with this policy's ``alpha`` and ``margin``."""
        return PairedTest(alpha=self.alpha, margin=self.margin)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One policy decision. ``outcome`` is "promote" / "keep" / "inconclusive" for
    promotion and "rollback" / "keep" / "end_probation" for rollback; ``reason`` is a
    short human-readable explanation; ``statistic`` is ``PairedTest.summary()`` of the
    test that decided."""

    outcome: str
    reason: str
    statistic: dict[str, Any]


def _evidence(test: PairedTest) -> str:
    return f"e={test.e_value:.3g} {'>=' if test.rejected else '<'} {test.threshold:g}"


def decide_promotion(
    *,
    labels_since_created: int,
    test: PairedTest,
    challenger_drift_active: bool,
    labels_since_transition: int,
    config: PolicyConfig,
) -> Verdict:
    """Promote, keep, or give up on the challenger.

    "promote" iff ``labels_since_created >= min_labels``, the test (incumbent = the
    champion, candidate = the challenger) rejects now, no drift alarm is active on
    the challenger, and ``labels_since_transition >= cooldown``. Otherwise
    "inconclusive" once ``labels_since_created >= max_labels``, else "keep"; the
    reason lists every condition that is missing, e.g.
    ``"min_labels: 120/200; evidence e=3.2 < 20"``.
    """
    missing = []
    if labels_since_created < config.min_labels:
        missing.append(f"min_labels: {labels_since_created}/{config.min_labels}")
    if labels_since_transition < config.cooldown:
        missing.append(f"cooldown: {labels_since_transition}/{config.cooldown}")
    if challenger_drift_active:
        missing.append("drift alarm on challenger")
    if not test.rejected:
        missing.append(f"evidence {_evidence(test)}")
    stat = test.summary()
    if not missing:
        reason = (
            f"challenger better: evidence {_evidence(test)} after {test.n} paired labels, "
            f"mean loss difference {test.mean_diff:+.4f}"
        )
        return Verdict("promote", reason, stat)
    if labels_since_created >= config.max_labels:
        reason = f"max_labels reached: {labels_since_created}/{config.max_labels}; " + "; ".join(missing)
        return Verdict("inconclusive", reason, stat)
    return Verdict("keep", "; ".join(missing), stat)


def decide_rollback(
    *,
    labels_since_promotion: int,
    test: PairedTest,
    config: PolicyConfig,
    confirmation: PairedTest | None = None,
) -> Verdict:
    """Roll back to the previous champion, keep the new one, or end the probation.

    ``test`` compares incumbent = the new champion with candidate = the previous
    champion (scoring in shadow); ``confirmation`` the other way round. While
    ``labels_since_promotion < probation``: "rollback" iff ``test`` rejects now;
    "end_probation" iff ``confirmation`` does (the new champion is shown better, so
    the previous one can stop scoring: on Elec2 the share of events it scores drops
    from 75 % to 33 %); else "keep".
    Afterwards: "end_probation". Stopping an e-process early, for any reason, keeps
    its guarantee: a not-worse new champion is still rolled back with probability
    at most ``alpha``.

    >>> cfg = PolicyConfig()
    >>> new_wins = PairedTest()
    >>> for i in range(300):  # the previous champion wrong on every 3rd event, the new one on every 5th
    ...     new_wins.update(float(i % 3 == 0), float(i % 5 == 0))
    >>> decide_rollback(labels_since_promotion=300, test=PairedTest(), config=cfg,
    ...                 confirmation=new_wins).outcome
    'end_probation'
    """
    stat = test.summary()
    if labels_since_promotion >= config.probation:
        reason = f"probation over: {labels_since_promotion}/{config.probation}; evidence {_evidence(test)}"
        return Verdict("end_probation", reason, stat)
    if test.rejected:
        reason = (
            f"previous champion better: evidence {_evidence(test)} after {test.n} paired "
            f"labels, mean loss difference {test.mean_diff:+.4f}"
        )
        return Verdict("rollback", reason, stat)
    if confirmation is not None and confirmation.rejected:
        reason = (
            f"new champion better: evidence {_evidence(confirmation)} after {confirmation.n} "
            f"paired labels, mean loss difference {confirmation.mean_diff:+.4f}"
        )
        return Verdict("end_probation", reason, confirmation.summary())
    reason = f"probation: {labels_since_promotion}/{config.probation}; evidence {_evidence(test)}"
    return Verdict("keep", reason, stat)


def should_reset_on_drift(
    *,
    labels_since_created: int,
    error_before: float,
    error_after: float,
    config: PolicyConfig,
) -> bool:
    """Whether a drift alarm on the challenger should reset it.

    ``error_before`` and ``error_after`` are two error *rates* of the challenger
    (e.g. its windowed 0/1 error before vs after the detected change point, each in
    [0, 1]). Detectors such as ADWIN also fire when a learner *improves*, so only a
    rise counts, and never within ``grace`` labelled events of its creation. True iff
    ``labels_since_created >= grace and error_after > error_before`` (NaN → False).
    """
    return labels_since_created >= config.grace and error_after > error_before
