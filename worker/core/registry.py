"""Model versions and their lineage.

Every model that ever served or trained gets the next version number and a record of
where it came from (parent, when, after how many labelled events, why), so an operator
can read the history and roll back to any version whose model is still retained.

>>> from worker.core.registry import Registry
>>> reg = Registry(retain=2)
>>> v1 = reg.create("dummy.NoChangeClassifier", model=object(), parent=None,
...                 reason="initial", labelled=0, ts=None)
>>> v2 = reg.create("dummy.NoChangeClassifier", model=object(), parent=1,
...                 reason="challenger", labelled=500, ts=None)
>>> v2.version, v2.parent, reg[2].reason
(2, 1, 'challenger')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelVersion:
    """One model and its lineage. ``model`` is None once it is no longer retained."""

    version: int
    spec: str
    parent: int | None
    reason: str
    created_labelled: int  # engine's labelled-event count when it was created
    created_ts: float | None  # event time when it was created, if events carry ts
    model: Any
    # Prequential over the labelled events it scored (see Engine for which), live while
    # its model is retained; frozen (metrics.FrozenMetrics) once the model is dropped.
    metrics: Any = None
    detector: Any = None  # drift detector on its 0/1 errors, while champion or challenger
    learned: int = 0  # labelled events it learned from
    roles: list[str] = field(default_factory=list)  # roles it has held, in order

    def lineage(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "spec": self.spec,
            "parent": self.parent,
            "reason": self.reason,
            "created_labelled": self.created_labelled,
            "created_ts": self.created_ts,
            "learned": self.learned,
            "roles": list(self.roles),
            "retained": self.model is not None,
        }


class Registry:
    """All versions, by number; keeps the models of at most ``retain`` former champions."""

    def __init__(self, retain: int) -> None:
        self.retain = retain
        self._versions: dict[int, ModelVersion] = {}
        self._retired: list[int] = []  # former champions whose model is kept, oldest first

    def create(self, spec: str, *, model: Any, parent: int | None, reason: str,
               labelled: int, ts: float | None) -> ModelVersion:
        version = len(self._versions) + 1
        mv = ModelVersion(version, spec, parent, reason, labelled, ts, model)
        self._versions[version] = mv
        return mv

    def __getitem__(self, version: int) -> ModelVersion:
        return self._versions[version]

    def __contains__(self, version: object) -> bool:
        return version in self._versions

    def __iter__(self) -> Iterator[ModelVersion]:
        return iter(self._versions.values())

    def __len__(self) -> int:
        return len(self._versions)

    def retire(self, version: int, *, keep_model: bool) -> None:
        """A model leaves its role: keep a former champion's model for rollbacks (up to
        ``retain`` of them), drop a discarded challenger's.

        A version whose model is dropped can never take a role again, so its metrics are
        frozen then (``metrics.freeze()``): memory stays bounded by the retained versions
        however many versions a long run creates.
        """
        mv = self._versions[version]
        if version in self._retired:
            self._retired.remove(version)
        if not keep_model:
            _drop(mv)
            return
        self._retired.append(version)
        while len(self._retired) > self.retain:
            _drop(self._versions[self._retired.pop(0)])

    def reinstate(self, version: int) -> None:
        """A retained model takes a role again (rollback): it is no longer retired."""
        if version in self._retired:
            self._retired.remove(version)


def _drop(mv: ModelVersion) -> None:
    """Let go of a version's model, detector and live metrics; its lineage stays."""
    mv.model = None
    mv.detector = None
    if mv.metrics is not None:
        mv.metrics = mv.metrics.freeze()
