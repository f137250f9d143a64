"""The engine's settings: one frozen object, validated once, handed to the engine.

The CLI builds it from flags, `WORKER_*` variables and the `[engine]` table (with its
`[engine.promotion]` sub-table) of a TOML file (:meth:`EngineConfig.from_mapping`);
nothing inside the engine reads the environment.

>>> config = EngineConfig.from_mapping({"warmup_labels": 100, "promotion": {"alpha": 0.01}})
>>> config.warmup_labels, config.promotion.alpha, config.challenger_init, config.policy
(100, 0.01, 'copy', 'auto')
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from worker.core.modelspec import validate_detector, validate_model
from worker.core.policy import PolicyConfig
from worker.errors import ConfigError

DEFAULT_SPEC = "preprocessing.StandardScaler | linear_model.LogisticRegression"
DEFAULT_DETECTOR = "drift.ADWIN"


@dataclass(frozen=True)
class EngineConfig:
    """What the champion/challenger engine does (ARCHITECTURE.md §3).

    - ``champion``: spec of version 1; ``challenger``: spec of every challenger
      created fresh (default: the champion's spec).
    - ``challenger_init``: ``"fresh"`` builds each challenger untrained from its spec;
      ``"copy"`` takes a trained copy of the champion (a pickle round trip). Default:
      ``"fresh"`` when a challenger spec is given or the champion learns (a copy of a
      learning champion would learn the same events and stay identical to it), else
      ``"copy"``.
    - ``warmup_labels``: version 1 learns while it serves until this many labelled
      events, then it is frozen and the first challenger is created.
    - ``champion_learns``: keep the champion learning after the warm-up too.
    - ``policy``: ``"auto"`` (the engine promotes, rolls back and resets by the
      ``promotion`` rules) or ``"manual"`` (only operators' commands change roles).
    - ``detector``: spec of the drift detector run on each model's 0/1 errors.
    - ``window`` / ``fading``: the sliding window and fading factor of the metrics.
    - ``pending_max`` / ``pending_ttl``: bounds of the buffers that hold predictions
      waiting for a label and labels waiting for their event; the age is in seconds
      of event time when events carry ``ts``, else in events.
    - ``retain_versions``: former champions kept in memory for ``rollback``.
    - ``max_classes``: distinct labels at most; a label beyond is refused (dead-lettered),
      since a continuous target or an id sent as the label would make every model and
      metric grow with each event.
    - ``promotion``: the thresholds of the sequential test and the decisions.
    """

    champion: str = DEFAULT_SPEC
    challenger: str | None = None
    challenger_init: str | None = None
    warmup_labels: int = 500
    champion_learns: bool = False
    policy: str = "auto"
    detector: str = DEFAULT_DETECTOR
    window: int = 1000
    fading: float = 0.999
    pending_max: int = 100_000
    pending_ttl: float = 86_400.0
    retain_versions: int = 10
    max_classes: int = 1000
    promotion: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        validate_model(self.champion)
        if self.challenger is not None:
            validate_model(self.challenger)
        validate_detector(self.detector)
        if self.challenger_init is None:
            fresh = self.challenger is not None or self.champion_learns
            object.__setattr__(self, "challenger_init", "fresh" if fresh else "copy")
        _one_of("challenger_init", self.challenger_init, ("fresh", "copy"))
        _one_of("policy", self.policy, ("auto", "manual"))
        for name in ("warmup_labels", "pending_max", "retain_versions", "window", "max_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 < self.fading <= 1.0:
            raise ConfigError(f"fading must be in (0, 1], got {self.fading!r}")
        if not self.pending_ttl > 0:
            raise ConfigError(f"pending_ttl must be > 0, got {self.pending_ttl!r}")

    @property
    def challenger_spec(self) -> str:
        return self.challenger or self.champion

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "engine") -> EngineConfig:
        """Build from a mapping (a TOML table merged with CLI flags); ``promotion`` is a
        sub-table of :class:`PolicyConfig` fields."""
        check_keys(values, {f.name for f in fields(cls)}, f"[{where}]")
        values = dict(values)
        promotion = values.pop("promotion", None) or {}
        check_keys(promotion, {f.name for f in fields(PolicyConfig)}, f"[{where}.promotion]")
        try:
            return cls(**values, promotion=PolicyConfig(**promotion))
        except TypeError as e:  # a value of the wrong type for a dataclass field
            raise ConfigError(f"invalid [{where}] value: {e}") from e


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_keys(section: object, allowed: Iterable[str], where: str) -> None:
    """Refuse a section that is not a table or has a key outside `allowed`.

    `where` is how the message names the section, e.g. ``"[run]"``:

    >>> check_keys({"bootstap": "x"}, {"bootstrap", "group"}, "[run]")
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: unknown key 'bootstap' in [run] (did you mean 'bootstrap'?)
    """
    allowed = set(allowed)
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a table of settings, got {type(section).__name__}")
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
            raise ConfigError(f"unknown key '{key}' in {where}{hint}")
