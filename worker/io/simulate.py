"""`worker simulate`: a realistic event stream for the worker, produced to Kafka.

Two halves:

- the **stream** (pure, no Kafka; unit tested): a source of ``(features, label)`` —
  one of river's synthetic generators with concept drift at chosen points, or the rows
  of a CSV / JSONL file — turned into the messages of ARCHITECTURE.md §2 in the order
  they are to be sent: events (key = an entity id ``user-<k>``) and, with
  ``labels="topic"``, each event's label on the ``labels`` topic after ``label_delay``
  further events;
- the **producer** (:func:`send`): writes those messages to Kafka, at a rate or as fast
  as possible, and counts what the broker acknowledged.

Concept drift. A synthetic generator has *variants* (river's ``variant`` /
``classification_function``: SEA has 4, Agrawal 10 …); a :class:`DriftPlan` lists the
variants of the successive concepts and the event indices at which each next concept
starts. An abrupt drift switches at the point; a gradual one (``width`` > 0) draws each
event from the new concept with probability ``1 / (1 + exp(-4 (i - point) / width))``,
as river's ``synth.ConceptDriftStream`` does.

>>> plan = DriftPlan(concepts=(0, 2), points=(3,))
>>> [concept for _x, _y, concept in synthetic("sea", plan, seed=1, limit=6)]
[0, 0, 0, 1, 1, 1]
>>> msgs = list(messages(synthetic("sea", plan, seed=1), events=3, entities=2, labels="topic",
...                      label_delay=1, id_prefix="e-", clock=lambda: 0.0))
>>> [(m.kind, m.value["id"]) for m in msgs]
[('event', 'e-0'), ('event', 'e-1'), ('label', 'e-0'), ('event', 'e-2'), ('label', 'e-1'), ('label', 'e-2')]
"""

from __future__ import annotations

import math
import random
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError

# name → (number of variants, factory(variant, seed, noise) → river dataset)
_GENERATORS: dict[str, tuple[int, Callable[[int, int | None, float], Any]]] = {}


def _generator(name: str, variants: int):
    def register(factory: Callable[[int, int | None, float], Any]):
        _GENERATORS[name] = (variants, factory)
        return factory

    return register


@_generator("sea", 4)
def _sea(variant: int, seed: int | None, noise: float) -> Any:
    from river.datasets import synth

    return synth.SEA(variant=variant, noise=noise, seed=seed)


@_generator("agrawal", 10)
def _agrawal(variant: int, seed: int | None, noise: float) -> Any:
    from river.datasets import synth

    return synth.Agrawal(classification_function=variant, seed=seed, perturbation=noise)


@_generator("hyperplane", 1_000_000)
def _hyperplane(variant: int, seed: int | None, noise: float) -> Any:
    """A variant is another random hyperplane (the generator's seed)."""
    from river.datasets import synth

    base = 0 if seed is None else seed
    return synth.Hyperplane(seed=base + 7919 * variant, noise_percentage=noise)


@_generator("sine", 4)
def _sine(variant: int, seed: int | None, noise: float) -> Any:
    from river.datasets import synth

    return synth.Sine(classification_function=variant, seed=seed, has_noise=noise > 0)


@_generator("stagger", 3)
def _stagger(variant: int, seed: int | None, noise: float) -> Any:
    from river.datasets import synth

    return synth.STAGGER(classification_function=variant, seed=seed)


@_generator("mixed", 2)
def _mixed(variant: int, seed: int | None, noise: float) -> Any:
    from river.datasets import synth

    return synth.Mixed(classification_function=variant, seed=seed)


GENERATORS: tuple[str, ...] = tuple(_GENERATORS)


def variants_of(generator: str) -> int:
    """How many concepts (variants) ``generator`` has."""
    try:
        return _GENERATORS[generator][0]
    except KeyError:
        raise ConfigError(f"unknown generator {generator!r} (known: {', '.join(GENERATORS)})") from None


# ----------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftPlan:
    """Which concept each event comes from.

    ``concepts``: the variants of the successive concepts (cycled when there are more
    drift points than concepts); ``points``: event indices (0-based) where the next
    concept starts, increasing; ``every``: one more point every that many events after
    the last explicit one (for endless streams); ``width``: 0 = abrupt, else the width
    of a gradual drift's sigmoid, in events.

    >>> abrupt = DriftPlan(concepts=(0, 1), points=(10,))
    >>> abrupt.concept(9), abrupt.concept(10)
    (0, 1)
    >>> plan = DriftPlan(concepts=(0, 1, 2), every=5)
    >>> [plan.concept(i) for i in (4, 5, 10, 15)], [plan.variant(plan.concept(i)) for i in (4, 5, 10, 15)]
    ([0, 1, 2, 3], [0, 1, 2, 0])
    """

    concepts: tuple[int, ...] = (0, 1)
    points: tuple[int, ...] = ()
    every: int = 0
    width: int = 0

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ConfigError("a drift plan needs at least one concept")
        if any(p < 0 for p in self.points) or list(self.points) != sorted(set(self.points)):
            raise ConfigError(f"drift points must be increasing event indices >= 0, got {list(self.points)}")
        if self.every < 0 or self.width < 0:
            raise ConfigError("--drift-every and --drift-width must be >= 0")

    def point(self, k: int) -> int | None:
        """Index of the ``k``-th drift point (0-based), or None when there is none."""
        if k < len(self.points):
            return self.points[k]
        if self.every <= 0:
            return None
        last = self.points[-1] if self.points else 0
        return last + self.every * (k - len(self.points) + 1)

    def concept(self, i: int, rng: random.Random | None = None) -> int:
        """Number of the concept event ``i`` is drawn from (0, 1, … one per drift point
        passed; its variant is :meth:`variant`). Gradual drifts draw with ``rng``."""
        k = 0
        while True:
            point = self.point(k)
            if point is None:
                break
            if self.width <= 0 or rng is None:
                past = i >= point
            else:
                z = -4.0 * (i - point) / self.width
                past = z < 700 and rng.random() < 1.0 / (1.0 + math.exp(z))
            if not past:
                break
            k += 1
        return k

    def variant(self, k: int) -> int:
        return self.concepts[k % len(self.concepts)]


def parse_points(values: Iterable[str], events: int) -> tuple[int, ...]:
    """``--drift-at`` values → event indices: ``20000``, or a share of ``--events``:
    ``0.5`` or ``50%``.

    >>> parse_points(["0.5", "75%", "100"], 1000)
    (100, 500, 750)
    """
    out = []
    for raw in values:
        text = raw.strip()
        try:
            if text.endswith("%") or "." in text:
                share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
                if not 0.0 <= share <= 1.0:
                    raise ValueError
                if events <= 0:
                    raise ConfigError(f"--drift-at {raw}: a share of the stream needs --events N")
                out.append(int(share * events))
            else:
                out.append(int(text))
        except ValueError:
            expected = "an event index or a share of --events (0.5, 50%)"
            raise ConfigError(f"--drift-at expects {expected}, got {raw!r}") from None
    if any(p < 0 for p in out):
        raise ConfigError("--drift-at must be >= 0")
    return tuple(sorted(set(out)))


# ----------------------------------------------------------------------------- sources


def synthetic(generator: str, plan: DriftPlan, *, seed: int | None = 42, noise: float = 0.0,
              limit: int | None = None) -> Iterator[tuple[dict[str, Any], Any, int]]:
    """``(features, label, concept)`` from river's ``generator``, concept by ``plan``.

    Each variant has its own generator (seeded ``seed + variant``), so a concept that
    comes back continues its own stream. Feature names become strings (SEA's ``0`` →
    ``"x0"``), numpy scalars plain numbers, 0/1 labels booleans.
    """
    n_variants, factory = _GENERATORS.get(generator, (0, None))
    if factory is None:
        variants_of(generator)  # raises the error naming the known ones
    for variant in plan.concepts:
        if not 0 <= variant < n_variants:
            raise ConfigError(f"{generator} has variants 0..{n_variants - 1}, got {variant}")
    streams: dict[int, Iterator] = {}
    rng = random.Random(seed)
    i = 0
    while limit is None or i < limit:
        k = plan.concept(i, rng)
        variant = plan.variant(k)
        stream = streams.get(variant)
        if stream is None:
            own_seed = None if seed is None else seed + variant
            stream = streams[variant] = iter(factory(variant, own_seed, noise))
        x, y = next(stream)
        yield _features(x), _label(y), k
        i += 1


def from_file(path: Path, *, target: str | None = None, positive: str | None = None,
              id_column: str | None = None, drop: Iterable[str] = (),
              notes: list[str] | None = None) -> Iterator[tuple[dict, Any, Any]]:
    """``(features, label, id or None)`` of each event row of a CSV (``target`` is the
    label column) or JSONL file; bad rows are skipped (said in ``notes`` at the end, with
    the reader's warnings), and so are a JSONL file's label lines (``--labels topic``
    sends each event's label, delayed). The id is the file's own one only for JSONL
    events and CSVs with ``id_column``."""
    from worker.core.types import Event
    from worker.io.files import BadRecord, is_csv, read_records

    notes = notes if notes is not None else []
    keep_ids = id_column is not None or not is_csv(path)
    skipped, first = 0, None
    for record in read_records(path, target=target, id_column=id_column, drop=tuple(drop), positive=positive,
                               warnings=notes):
        if isinstance(record, Event):
            yield dict(record.features), record.label, record.id if keep_ids else None
        elif isinstance(record, BadRecord):
            skipped, first = skipped + 1, first or record
    if first is not None:
        notes.append(f"{skipped} bad rows of {path.name} skipped, the first at line {first.line}: "
                     f"{first.reason}")


def _features(x: dict) -> dict[str, Any]:
    out = {}
    for name, value in x.items():
        key = name if isinstance(name, str) else f"x{name}"
        if hasattr(value, "item"):  # numpy scalar
            value = value.item()
        out[key] = value
    return out


def _label(y: Any) -> Any:
    if hasattr(y, "item"):
        y = y.item()
    if isinstance(y, int) and not isinstance(y, bool) and y in (0, 1):
        return bool(y)
    return y


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Message:
    """One message to send: ``kind`` is ``"event"`` or ``"label"``."""

    kind: str
    key: str | None
    value: dict[str, Any]


def messages(source: Iterable[tuple[dict, Any, Any]], *, events: int = 0, entities: int = 100,
             labels: str = "inline", label_delay: int = 0, id_prefix: str = "evt-", seed: int | None = 42,
             clock: Callable[[], float] = time.time) -> Iterator[Message]:
    """The events of ``source`` (at most ``events``; 0 = all) and their labels, in send order.

    ``source`` yields ``(features, label, x)``: ``x`` is the event's own id when it is a
    string (file sources), else ignored (the id is ``id_prefix`` + the event's index).
    ``entities`` > 0 keys each event with ``user-<k>``, ``k`` drawn uniformly (seeded);
    0 sends no key. ``labels``: ``"inline"`` puts the label in the event; ``"topic"``
    sends ``{"id", "label", "ts"}`` on the labels topic once ``label_delay`` more
    events have been sent (the last labels right after the last event); ``"none"``
    sends no labels. An event without a label never gets one.
    """
    if labels not in ("inline", "topic", "none"):
        raise ConfigError(f"labels must be inline, topic or none, got {labels!r}")
    if label_delay < 0:
        raise ConfigError("--label-delay must be >= 0")
    rng = random.Random(seed)
    waiting: deque[Message] = deque()
    for sent, (features, label, own) in enumerate(source):
        if events and sent >= events:
            break
        event_id = own if isinstance(own, str) else f"{id_prefix}{sent}"
        key = f"user-{rng.randrange(entities)}" if entities > 0 else None
        ts = round(clock(), 6)
        value: dict[str, Any] = {"id": event_id, "ts": ts, "features": features}
        if labels == "inline" and label is not None:
            value["label"] = label
        yield Message("event", key, value)
        if labels == "topic" and label is not None:
            waiting.append(Message("label", key, {"id": event_id, "label": label, "ts": ts}))
        while waiting and len(waiting) > label_delay:
            yield _stamped(waiting.popleft(), clock)
    while waiting:
        yield _stamped(waiting.popleft(), clock)


def _stamped(message: Message, clock: Callable[[], float]) -> Message:
    """A label carries the time it was sent (its own ``ts``), not its event's."""
    return Message(message.kind, message.key, {**message.value, "ts": round(clock(), 6)})


# ----------------------------------------------------------------------------- Kafka


@dataclass
class Sent:
    """What was handed to the producer and what the broker acknowledged."""

    events: int = 0
    labels: int = 0
    events_acked: int = 0
    labels_acked: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events_acked, "labels": self.labels_acked, "failed": self.failed,
                "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_acked / self.seconds, 1) if self.seconds > 0 else None,
                **({"errors": self.errors} if self.errors else {})}


class Stop:
    """Set by SIGINT / SIGTERM while installed: the send loop stops at the next message."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.requested = True


def send(producer_config: dict[str, Any], events_topic: str, labels_topic: str, stream: Iterable[Message], *,
         rate: float = 0.0, stop: Stop | None = None, on_event: Callable[[], None] | None = None,
         flush_s: float = 30.0) -> Sent:
    """Produce ``stream``; ``rate`` > 0 paces the events (labels are not paced).
    Returns the counts once everything handed over is acknowledged (or ``flush_s``)."""
    import orjson
    from confluent_kafka import KafkaError

    from worker.io import kafka

    producer = kafka.producer({"enable.idempotence": True, "acks": "all", "linger.ms": 20,
                               "compression.type": "lz4", **producer_config})
    sent = Sent()

    def acked(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            sent.failed += 1
            if len(sent.errors) < 5:
                sent.errors.append(err.str())
        elif msg.topic() == events_topic:
            sent.events_acked += 1
        else:
            sent.labels_acked += 1

    began = time.monotonic()
    try:
        for message in stream:
            if stop is not None and stop.requested:
                sent.interrupted = True
                break
            is_event = message.kind == "event"
            if is_event and rate > 0:
                delay = began + sent.events / rate - time.monotonic()
                if delay > 0:
                    producer.poll(delay)  # serves delivery callbacks while it waits
            topic = events_topic if is_event else labels_topic
            value = orjson.dumps(message.value)
            key = message.key.encode() if message.key is not None else None
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=acked)
                    break
                except BufferError:  # the local queue is full: let the broker catch up
                    producer.poll(0.05)
            if is_event:
                sent.events += 1
                if on_event is not None:
                    on_event()
            else:
                sent.labels += 1
            if (sent.events + sent.labels) % 1000 == 0:
                producer.poll(0)
    finally:
        remaining = producer.flush(flush_s)
        sent.failed += remaining
        if remaining and len(sent.errors) < 5:
            sent.errors.append(f"{remaining} messages not acknowledged within {flush_s:g}s")
        sent.seconds = time.monotonic() - began
    return sent


_PREFIX = re.compile(r"[A-Za-z0-9._:-]*")


def check_id_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or len(prefix) > 200:
        raise ConfigError(f"--id-prefix may only contain letters, digits and . _ : - (got {prefix!r})")
    return prefix
