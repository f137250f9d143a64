"""Kafka message bytes ⇄ the engine's dataclasses (ARCHITECTURE.md §2), with orjson.

This is the one place where bad input is recognised. Every way a message can be bad
raises :class:`~worker.errors.BadInputError` whose text is a short, stable reason
("missing id", "feature 'x' is not finite (NaN/inf)", ...): it becomes the
``dlq.error`` header, and stable texts let operators group dead letters by cause.
Reasons never quote more than a few dozen characters of the input.

Decoding is on the hot path (one call per event), so it does one ``orjson.loads`` and
one pass over the features, and nothing else on success. The careful diagnostics
(which feature is NaN, ...) only run once a message has already failed.

>>> from worker.io.codec import decode_event
>>> e = decode_event(b'{"id": "evt-42", "features": {"amount": 12.5, "country": "FR", "age": null},'
...                  b' "label": true}', key=b"user-1", position=("events", 0, 7))
>>> e.id, e.features, e.label, e.key, e.position
('evt-42', {'amount': 12.5, 'country': 'FR'}, True, 'user-1', ('events', 0, 7))
>>> decode_event(b'{"id": "evt-43", "features": {"x": NaN}}', None, ("events", 0, 8))
Traceback (most recent call last):
...
worker.errors.BadInputError: feature 'x' is not finite (NaN/inf)

Micro benchmark (CPython 3.11.7, orjson 3.11, this 2-core container, under load), on
the 197-byte, 9-feature ``BENCH_EVENT`` of tests/unit/test_codec.py::

    python -m timeit -s "from worker.io.codec import decode_event as d; import tests.unit.test_codec as t" \
        "d(t.BENCH_EVENT, b'user-1', ('events', 0, 1))"

~3 µs per ``decode_event`` (2.9-3.6 over runs): ``orjson.loads`` ~0.7 µs, building the
slotted ``Event`` ~0.2 µs, the checks the rest (four string features: the per-value
pass). An event of numbers only, such as Elec2's eight features: ~1.6 µs, one
``math.hypot`` checking them all (2026-11-27; 2.1 µs with a set of their types first).
``encode_prediction`` of a binary prediction with a shadow: ~0.8 µs (1.0 before the
booleans were keyed inline).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from worker.core.state import secret_key
from worker.core.types import (
    COMMAND_TYPES,
    LIFECYCLE_TYPES,
    Command,
    Event,
    Label,
    LifecycleEvent,
    Position,
    Prediction,
)
from worker.errors import BadInputError, ConfigError, InvalidCommandError

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "decode_command",
    "decode_event",
    "decode_label",
    "decode_record",
    "dlq_headers",
    "encode_command",
    "encode_lifecycle",
    "encode_prediction",
    "sign_command",
    "verify_command",
]

#: Longest ``dlq.error`` header value, in characters.
MAX_ERROR_CHARS = 1000
#: Bound of an event's or label's ``ts`` in seconds (about the year 5138): milliseconds
#: since the epoch are above it for any date after 1973.
MAX_TS = 1e11
#: How much of a feature name a reason quotes.
_QUOTE_CHARS = 64

_isfinite = math.isfinite
_hypot = math.hypot
_loads = orjson.loads
_dumps = orjson.dumps


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one input message; anything beyond is bad input, not a crash or an OOM.

    The defaults match Kafka's default maximum message size (1 MiB) and keep one event
    small enough that a burst of hostile ones cannot exhaust memory or blow up a model
    (river models grow with every distinct feature name).
    """

    max_id_chars: int = 256
    max_features: int = 1000
    max_string_chars: int = 4096
    max_message_bytes: int = 1_048_576
    # A feature beyond it can overflow a model's squares (1e155² is inf) and poison it
    # with NaN for good — the frozen champion and every copy of it.
    max_abs_number: float = 1e100

    def __post_init__(self) -> None:
        for name in ("max_id_chars", "max_features", "max_string_chars", "max_message_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"limits.{name} must be an integer >= 1, got {v!r}")
        if not 0 < self.max_abs_number < math.inf:
            raise ConfigError(f"limits.max_abs_number must be a positive number, got {self.max_abs_number!r}")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- decoding


def decode_event(
    value: bytes | None, key: bytes | None, position: Position | None, limits: Limits = DEFAULT_LIMITS
) -> Event:
    """One ``events`` message → :class:`Event`, or :class:`BadInputError` saying why not.

    ``key`` is the Kafka message key (the entity id for the traffic split): UTF-8 bytes,
    or ``None``; an empty key counts as no key. A ``null`` feature is dropped (treated
    as missing). Unknown top-level fields are ignored, so producers can add some.
    """
    # _load inlined: one call less per event on the hot path, same checks and reasons
    if not value or len(value) > limits.max_message_bytes:
        _load(value, limits, "event", _check_event)  # raises the reason
    try:
        obj = _loads(value)
    except orjson.JSONDecodeError as exc:
        raise _not_json(value, str(exc), limits, "event", _check_event) from None
    if type(obj) is not dict:
        raise BadInputError(f"event must be a JSON object, got {_json_type(obj)}")
    entity: str | None = None
    if key:
        try:
            entity = key.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInputError("invalid UTF-8 in message key") from None
    return _event(obj, entity, position, limits)


def decode_label(value: bytes | None, position: Position | None, limits: Limits = DEFAULT_LIMITS) -> Label:
    """One ``labels`` message ``{"id", "label", "ts"?}`` → :class:`Label`.

    Unlike on an event, the label is required: a label message without one is useless.
    """
    return _label(_load(value, limits, "label message", _check_label), position, limits)


def decode_record(value: bytes, position: Position | None, limits: Limits = DEFAULT_LIMITS) -> Event | Label:
    """One line of a replay file → :class:`Event` (it has ``features``) or :class:`Label`
    (it has none), with :func:`decode_event`'s and :func:`decode_label`'s checks.

    One ``orjson.loads`` decides and decodes. On the error path, where the JSON cannot be
    parsed, a line that mentions ``"features"`` is diagnosed as an event, any other as a
    label message.

    >>> decode_record(b'{"id": "e1", "features": {"x": 1.0}, "label": true}', ("file", 0, 1)).features
    {'x': 1.0}
    >>> decode_record(b'{"id": "e1", "label": false}', ("file", 0, 2))
    Label(id='e1', label=False, ts=None, position=('file', 0, 2))
    """
    if not value:
        raise BadInputError("empty message")
    if len(value) > limits.max_message_bytes:
        raise BadInputError(f"message larger than {limits.max_message_bytes} bytes")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        event = b'"features"' in value
        raise _not_json(value, str(exc), limits, "event" if event else "label message",
                        _check_event if event else _check_label) from None
    if type(obj) is not dict:
        kind = "event" if b'"features"' in value else "label message"
        raise BadInputError(f"{kind} must be a JSON object, got {_json_type(obj)}")
    if "features" in obj:
        return _event(obj, None, position, limits)
    return _label(obj, position, limits)


def decode_command(
    value: bytes | None, limits: Limits = DEFAULT_LIMITS
) -> tuple[Command | LifecycleEvent, dict[str, Any]]:
    """One ``control`` message → (:class:`Command` or :class:`LifecycleEvent`, raw dict).

    The control topic is one ordered log of both operator/worker commands (``type`` in
    ``COMMAND_TYPES``) and lifecycle events (``LIFECYCLE_TYPES``). The raw dict is
    returned too because :func:`verify_command` checks the signature over exactly the
    fields that were sent, including ones this version does not know.
    """
    obj = _load(value, limits, "control message", _check_control)
    return _control(obj, limits), obj


# --------------------------------------------------------------------------- encoding


def encode_prediction(p: Prediction) -> bytes:
    """:class:`Prediction` → the §2 JSON (``ts`` and ``shadow`` omitted when ``None``).

    JSON object keys are strings, so class labels become ``"true"``/``"false"`` for
    booleans (as in §2), ``"null"`` for ``None`` and ``str(c)`` otherwise; the
    ``prediction`` value keeps its native JSON type. numpy scalars (some river models
    return them) are written as plain numbers. A non-finite probability is written as
    ``null`` (orjson's rule). An unserialisable prediction raises
    :class:`BadInputError`: like a model raising, it dead-letters that one event.

    >>> encode_prediction(Prediction(id="evt-42", served_by="champion", model_version=7,
    ...                              prediction=True, proba={True: 0.91, False: 0.09}))
    b'{"id":"evt-42","served_by":"champion","model_version":7,"prediction":true,"proba":{"true":0.91,"false":0.09}}'
    """
    # One per event: the dict is built as literals, and booleans (the classes of a binary
    # model) are keyed inline; the key order is §2's either way.
    proba = {}
    for c, v in p.proba.items():
        if c is True:
            proba["true"] = v
        elif c is False:
            proba["false"] = v
        else:
            proba[_class_key(c)] = v
    if p.ts is None:
        out: dict[str, Any] = {"id": p.id, "served_by": p.served_by, "model_version": p.model_version,
                               "prediction": p.prediction, "proba": proba}
    else:
        out = {"id": p.id, "ts": p.ts, "served_by": p.served_by, "model_version": p.model_version,
               "prediction": p.prediction, "proba": proba}
    if p.shadow is not None:
        out["shadow"] = p.shadow
    try:
        return _dumps(out, default=_scalar, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise BadInputError(f"prediction is not JSON-serialisable: {exc}") from None


def encode_command(c: Command, secret: bytes | None) -> bytes:
    """:class:`Command` → control-topic JSON, signed with ``secret`` when one is given.

    ``None`` fields are left out (and so are not signed). Without a secret the command's
    own ``signature`` (if any) is kept, so an already-signed command passes through.

    >>> raw = encode_command(Command(type="promote", command_id="c-1", expected_champion=7), b"k")
    >>> cmd, fields = decode_command(raw)
    >>> cmd.expected_champion, verify_command(fields, b"k"), verify_command(fields, b"other")
    (7, True, False)
    """
    out: dict[str, Any] = {
        "type": c.type,
        "command_id": c.command_id,
        "issued_by": c.issued_by,
        "reason": c.reason,
    }
    for name in ("expected_champion", "to_version", "percent", "ts"):
        v = getattr(c, name)
        if v is not None:
            out[name] = v
    if secret is not None:
        out["signature"] = sign_command(out, secret)
    elif c.signature is not None:
        out["signature"] = c.signature
    return orjson.dumps(out)


def encode_lifecycle(e: LifecycleEvent, secret: bytes | None = None, signed_at: float | None = None) -> bytes:
    """:class:`LifecycleEvent` → control-topic JSON, ``None`` fields left out; signed as a
    command is (:func:`sign_command`) when a ``secret`` is given, since scorers serve what
    lifecycle events name and, with signed commands required, must not trust anyone else's
    — nor an old one written again: a signed event also carries when it was signed
    (``signed_at``: wall-clock seconds, or the caller's increasing ones, see
    :class:`worker.io.lifecycle.SigningClock`).

    ``detail`` stays a nested object (not flattened), so a type-specific field can
    never clash with a common one.

    >>> encode_lifecycle(LifecycleEvent(type="promoted", command_id="c-1", champion=8,
    ...                                 challenger=9, offsets={"events:0": 41}, labelled=500))
    b'{"type":"promoted","command_id":"c-1","champion":8,"challenger":9,"detail":{},"offsets":{"events:0":41},"labelled":500}'
    """
    out: dict[str, Any] = {"type": e.type}
    for name in ("command_id", "champion", "challenger"):
        v = getattr(e, name)
        if v is not None:
            out[name] = v
    out["detail"] = e.detail
    out["offsets"] = e.offsets
    out["labelled"] = e.labelled
    if e.ts is not None:
        out["ts"] = e.ts
    if e.split is not None:
        out["split"] = e.split
    data = orjson.dumps(out, default=_scalar, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    if secret is None:
        return data
    fields = orjson.loads(data)  # signed as the reader will see it: string keys, plain numbers
    fields["signed_at"] = signed_at if signed_at is not None else signing_time()
    fields["signature"] = sign_command(fields, secret)
    return orjson.dumps(fields)


# --------------------------------------------------------------------------- signatures


def signing_time() -> float:
    """Wall-clock seconds to the millisecond, never rounded up: a ``signed_at``."""
    return math.floor(time.time() * 1000) / 1000


def sign_command(fields: dict[str, Any], secret: bytes | str) -> str:
    """Hex HMAC-SHA256 of the command's canonical JSON, the ``"signature"`` key excluded.

    The canonical form is what Python's standard library writes with
    ``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``,
    encoded as UTF-8: keys sorted by code point, no whitespace, strings with only
    ``"``, ``\\``, ``\\b \\f \\n \\r \\t`` and other control characters (``\\u00XX``,
    lowercase hex) escaped and everything else raw UTF-8, ``true``/``false``/``null``,
    numbers as Python's ``repr``. A producer in any language can sign like this
    (standard library only)::

        import hashlib, hmac, json
        cmd = {"type": "promote", "command_id": "c-1", "issued_by": "alice", "expected_champion": 7,
               "ts": time.time()}  # when it was signed: a worker requiring signatures refuses an old one
        body = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        cmd["signature"] = hmac.new(b"secret", body.encode("utf-8"), hashlib.sha256).hexdigest()
        message = json.dumps(cmd).encode("utf-8")  # any JSON layout: the verifier re-canonicalises

    The verifier re-derives the canonical form from the *parsed* values, so a signer in
    another language must write each number as Python would re-print it: integers as
    plain digits (versions, counts), floats in shortest round-trip form (``12.5``,
    ``1764160001.0``; but Python writes ``1e-05`` where orjson writes ``0.00001``,
    hence the stdlib form, not orjson's, is the canonical one). A mismatch fails
    closed (the command is rejected), never open.

    >>> cmd = {"type": "promote", "command_id": "c-1", "issued_by": "alice", "expected_champion": 7}
    >>> body = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    >>> hmac.new(b"secret", body.encode("utf-8"), hashlib.sha256).hexdigest() == sign_command(cmd, b"secret")
    True
    """
    return hmac.new(secret_key(secret, "command"), _canonical(fields), hashlib.sha256).hexdigest()


def verify_command(raw: dict[str, Any], secret: bytes | Sequence[bytes]) -> bool:
    """Whether ``raw`` (as returned by :func:`decode_command`) carries a valid signature
    under ``secret``, or under one of several (the current secret and previous ones).

    ``False`` when the signature is missing, malformed or wrong — never an exception
    for anything a message can contain. Compared in constant time; hex case is ignored.
    """
    sig = raw.get("signature")
    if type(sig) is not str or not sig.isascii():
        return False
    secrets = secret if isinstance(secret, list | tuple) else [secret]
    try:
        expected = [sign_command(raw, s) for s in secrets]
    except BadInputError:
        return False
    return any(hmac.compare_digest(e, sig.lower()) for e in expected)


def dlq_headers(error: str, position: Position) -> list[tuple[str, bytes]]:
    """Kafka headers for a dead letter: why it failed and where it came from (§2).

    The original bytes are the dead letter's value; these headers let an operator find
    and replay it. The reason is cut to 1000 characters.

    >>> dlq_headers("missing id", ("events", 3, 1234))
    [('dlq.error', b'missing id'), ('dlq.original.topic', b'events'), \
('dlq.original.partition', b'3'), ('dlq.original.offset', b'1234')]
    """
    topic, partition, offset = position
    return [
        ("dlq.error", error[:MAX_ERROR_CHARS].encode("utf-8", "backslashreplace")),
        ("dlq.original.topic", topic.encode("utf-8", "backslashreplace")),
        ("dlq.original.partition", str(partition).encode("ascii")),
        ("dlq.original.offset", str(offset).encode("ascii")),
    ]


# --------------------------------------------------------------------------- internals


def _load(
    value: bytes | None, limits: Limits, kind: str, check: Callable[[dict[str, Any], Limits], Any]
) -> dict[str, Any]:
    """Bytes → JSON object. ``check`` validates a leniently parsed object on failure only."""
    if not value:
        raise BadInputError("empty message")
    if len(value) > limits.max_message_bytes:
        raise BadInputError(f"message larger than {limits.max_message_bytes} bytes")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _not_json(value, str(exc), limits, kind, check) from None
    if type(obj) is not dict:
        raise BadInputError(f"{kind} must be a JSON object, got {_json_type(obj)}")
    return obj


def _not_json(
    value: bytes, message: str, limits: Limits, kind: str, check: Callable[[dict[str, Any], Limits], Any]
) -> BadInputError:
    """The reason a message orjson refused is bad (or raises a more precise one).

    orjson follows RFC 8259 strictly: ``NaN``, ``Infinity`` and numbers that overflow a
    double (``1e400``) are syntax errors to it, yet Python's ``json.dumps`` writes the
    first two by default — the likeliest bad input. Re-parsing leniently with the
    standard library lets the normal checks name the culprit ("feature 'x' is not
    finite"). Error path only, and bounded by ``max_message_bytes``.
    """
    if "not valid UTF-8" in message:
        return BadInputError("invalid UTF-8")
    if not bytes(value).strip():
        return BadInputError("empty message")
    reason = message.split(": line ", 1)[0].split(",", 1)[0]
    constants: list[str] = []
    try:
        lenient = json.loads(
            bytes(value).decode("utf-8"), parse_constant=lambda c: constants.append(c) or float(c)
        )
    except (ValueError, RecursionError):
        return BadInputError(f"not JSON: {reason}")
    if type(lenient) is not dict:
        return BadInputError(f"{kind} must be a JSON object, got {_json_type(lenient)}")
    check(lenient, limits)  # raises the precise reason, if the problem is in a known field
    if constants or "infinity" in reason:
        return BadInputError("number is not finite (NaN/inf)")
    return BadInputError(f"not JSON: {reason}")


def _event(obj: dict[str, Any], key: str | None, position: Position | None, limits: Limits,
           parsed: bool = True) -> Event:
    # Feature *names* are not length-checked: max_message_bytes bounds them, and what
    # grows a river model is the number of distinct names, which no per-message limit
    # can bound. Floats from orjson (``parsed``) are always finite, so features that are
    # all numbers or booleans need only one C-level pass in the common case: their
    # Euclidean norm (never below the largest magnitude), which raises TypeError on any
    # other value orjson makes (a string, null, an array or an object). The per-value
    # check names the culprit, drops nulls, and serves the lenient re-parse in _not_json.
    id_ = obj.get("id")
    if type(id_) is not str or not 0 < len(id_) <= limits.max_id_chars:
        _id(id_, limits)  # raises the reason
    features = obj.get("features")
    if type(features) is not dict:
        raise BadInputError("missing features" if features is None else "features must be an object")
    if len(features) > limits.max_features:
        raise BadInputError(f"too many features: {len(features)} > {limits.max_features}")
    if not parsed:
        _check_features(features, limits)
    else:
        try:
            small = _hypot(*features.values()) <= limits.max_abs_number
        except TypeError:  # not only numbers and booleans
            small = False
        if not small:
            _check_features(features, limits)  # raises, naming the feature, if one is that large
    label = obj.get("label")
    if label is not None and type(label) is not bool:  # a bool needs no check
        label = _label_value(label, limits)
    ts = obj.get("ts")
    if ts is not None:
        ts = _timestamp(ts)
    return Event(id_, features, label, ts, key, position)


def _check_features(features: dict[str, Any], limits: Limits) -> None:
    """Refuse a non-finite or huge number, a long string or a value of another type; drop nulls."""
    max_chars, max_abs = limits.max_string_chars, limits.max_abs_number
    nulls = None
    for name, v in features.items():  # the one pass; a bool needs no check
        t = type(v)
        if t is float or t is int:
            if not -max_abs <= v <= max_abs:
                if t is float and not _isfinite(v):
                    raise BadInputError(f"feature {_quote(name)} is not finite (NaN/inf)")
                raise BadInputError(f"feature {_quote(name)} is larger than {max_abs:g} in magnitude")
        elif t is str:
            if len(v) > max_chars:
                raise BadInputError(f"string feature {_quote(name)} longer than {max_chars} characters")
        elif v is None:
            if nulls is None:
                nulls = [name]
            else:
                nulls.append(name)
        elif t is not bool:
            raise BadInputError(f"feature {_quote(name)} has an unsupported type {_json_type(v)}")
    if nulls is not None:
        for name in nulls:
            del features[name]


def _check_event(obj: dict[str, Any], limits: Limits) -> Any:
    return _event(obj, None, None, limits, parsed=False)


def _label(obj: dict[str, Any], position: Position | None, limits: Limits) -> Label:
    id_ = _id(obj.get("id"), limits)
    label = obj.get("label")
    if label is None:
        raise BadInputError("missing label")
    label = _label_value(label, limits)
    ts = obj.get("ts")
    if ts is not None:
        ts = _timestamp(ts)
    return Label(id_, label, ts, position)


def _check_label(obj: dict[str, Any], limits: Limits) -> Any:
    return _label(obj, None, limits)


def _control(obj: dict[str, Any], limits: Limits) -> Command | LifecycleEvent:
    type_ = obj.get("type")
    if type(type_) is not str:
        raise BadInputError("missing type" if type_ is None else "type must be a string")
    if type_ in LIFECYCLE_TYPES:
        return _lifecycle(obj, type_)
    if type_ not in COMMAND_TYPES:  # not answered: it may be a newer release's lifecycle event
        raise BadInputError(f"unknown control message type {_quote(type_)}")
    command_id = obj.get("command_id")
    if type(command_id) is not str or not 0 < len(command_id) <= limits.max_id_chars:
        raise BadInputError(
            "missing command_id"
            if command_id is None
            else f"command_id must be a non-empty string of at most {limits.max_id_chars} characters"
        )
    try:
        return _command(obj, type_, command_id, limits)
    except BadInputError as e:  # with an id to answer: the sender waits for it
        try:
            issued_by = _string(obj.get("issued_by", "operator"), "issued_by", limits)
        except BadInputError:
            issued_by = "operator"
        raise InvalidCommandError(str(e), command_id, type_, issued_by) from None


def _command(obj: dict[str, Any], type_: str, command_id: str, limits: Limits) -> Command:
    percent = _percent(obj.get("percent"), "percent")
    if percent is None and type_ == "set_split":
        raise BadInputError("set_split needs percent")
    ts = obj.get("ts")
    signature = obj.get("signature")
    if signature is not None and type(signature) is not str:
        raise BadInputError("signature must be a string")
    return Command(
        type=type_,
        command_id=command_id,
        issued_by=_string(obj.get("issued_by", "operator"), "issued_by", limits),
        reason=_string(obj.get("reason", ""), "reason", limits),
        expected_champion=_version(obj.get("expected_champion"), "expected_champion"),
        to_version=_version(obj.get("to_version"), "to_version"),
        percent=percent,
        ts=None if ts is None else _number(ts, "ts"),
        signature=signature,
    )


def _lifecycle(obj: dict[str, Any], type_: str) -> LifecycleEvent:
    command_id = obj.get("command_id")
    if command_id is not None and type(command_id) is not str:
        raise BadInputError("command_id must be a string")
    detail = obj.get("detail", {})
    if type(detail) is not dict:
        raise BadInputError("detail must be an object")
    offsets = obj.get("offsets", {})
    if type(offsets) is not dict or any(type(o) is not int for o in offsets.values()):
        raise BadInputError("offsets must be an object of integer offsets")
    labelled = obj.get("labelled", 0)
    if type(labelled) is not int or labelled < 0:
        raise BadInputError("labelled must be an integer >= 0")
    ts = obj.get("ts")
    return LifecycleEvent(
        type=type_,
        command_id=command_id,
        champion=_version(obj.get("champion"), "champion"),
        challenger=_version(obj.get("challenger"), "challenger"),
        detail=detail,
        offsets=offsets,
        labelled=labelled,
        ts=None if ts is None else _number(ts, "ts"),
        split=_percent(obj.get("split"), "split"),
    )


def _check_control(obj: dict[str, Any], limits: Limits) -> Any:
    return _control(obj, limits)


def _id(id_: Any, limits: Limits) -> str:
    if type(id_) is not str or not 0 < len(id_) <= limits.max_id_chars:
        if id_ is None:
            raise BadInputError("missing id")
        raise BadInputError(f"id must be a non-empty string of at most {limits.max_id_chars} characters")
    return id_


def _label_value(label: Any, limits: Limits) -> Any:
    """A label (not None): bool, finite number or bounded string."""
    t = type(label)
    if t is str:
        if len(label) > limits.max_string_chars:
            raise BadInputError(f"string label longer than {limits.max_string_chars} characters")
    elif t is float:
        if not _isfinite(label):
            raise BadInputError("label is not finite (NaN/inf)")
    elif t is not bool and t is not int:
        raise BadInputError("label must be a bool, number or string")
    return label


def _number(v: Any, name: str) -> float:
    """A finite JSON number as a float (not a bool: ``True`` is an int in Python)."""
    t = type(v)
    if t is float:
        if _isfinite(v):
            return v
    elif t is int:
        try:
            return float(v)
        except OverflowError:  # only from the lenient re-parse: orjson makes big ints floats
            pass
    raise BadInputError(f"{name} must be a finite number")


def _timestamp(v: Any) -> float:
    """An event or label ``ts``: seconds since the epoch. The pending buffers age their
    entries by it, so one event stamped in milliseconds would look 50,000 years late to
    every prediction waiting for its label and evict them all; it is refused instead."""
    ts = _number(v, "ts")
    if -MAX_TS < ts < MAX_TS:
        return ts
    unit = next((u for u, scale in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9))
                 if -MAX_TS < ts / scale < MAX_TS), None)
    raise BadInputError(f"ts must be seconds since the epoch (|ts| < {MAX_TS:.0e})"
                        + (f"; {v} looks like {unit}" if unit else ""))


def _percent(v: Any, name: str) -> float | None:
    if v is None:
        return None
    percent = _number(v, name)
    if not 0.0 <= percent <= 100.0:
        raise BadInputError(f"{name} must be a number between 0 and 100")
    return percent


def _version(v: Any, name: str) -> int | None:
    if v is None or type(v) is int:
        return v
    raise BadInputError(f"{name} must be an integer")


def _string(v: Any, name: str, limits: Limits) -> str:
    if type(v) is not str or len(v) > limits.max_string_chars:
        raise BadInputError(f"{name} must be a string of at most {limits.max_string_chars} characters")
    return v


def _quote(name: str) -> str:
    """A name quoted for a reason, cut so that reasons stay short."""
    if len(name) > _QUOTE_CHARS:
        name = name[:_QUOTE_CHARS] + "…"
    return f"'{name}'"


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_type(v: Any) -> str:
    return "null" if v is None else _JSON_TYPES.get(type(v), type(v).__name__)


def _class_key(c: Any) -> str:
    """A class label as a JSON object key: ``True`` → ``"true"``, ``None`` → ``"null"``."""
    if type(c) is str:
        return c
    if c is True:
        return "true"
    if c is False:
        return "false"
    if c is None:
        return "null"
    item = getattr(c, "item", None)  # numpy scalar → the Python value it holds
    if item is not None:
        return _class_key(item())
    return str(c)


def _scalar(v: Any) -> Any:
    """orjson ``default``: numpy-like scalars orjson does not know → Python values."""
    item = getattr(v, "item", None)
    if item is None:
        raise TypeError
    return item()


def _canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a signature covers: stdlib JSON, sorted keys, no whitespace, UTF-8."""
    try:
        body = json.dumps(
            {k: v for k, v in fields.items() if k != "signature"},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return body.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # NaN, unserialisable, lone surrogate, deep
        raise BadInputError(f"command cannot be signed: {exc}") from None
