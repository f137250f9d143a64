import hashlib
import hmac
import json
import math
import time

import orjson
import pytest

from worker.core.types import Command, LifecycleEvent, Prediction
from worker.errors import BadInputError, ConfigError, InvalidCommandError
from worker.io.codec import (
    DEFAULT_LIMITS,
    Limits,
    decode_command,
    decode_event,
    decode_label,
    dlq_headers,
    encode_command,
    encode_lifecycle,
    encode_prediction,
    sign_command,
    verify_command,
)

POS = ("events", 2, 99)
SECRET = b"s3cret"

# Micro benchmark (this 2-core container, CPython 3.11.7, orjson 3.11), 197-byte event, 9 features:
#   python -m timeit -s "from worker.io.codec import decode_event as d; import tests.unit.test_codec as t" \
#       "d(t.BENCH_EVENT, b'user-1', ('events', 0, 1))"
#   → ~3 µs per decode_event (2.9-3.6 over runs; orjson.loads alone ~0.7 µs, the frozen Event ~0.7 µs).
BENCH_EVENT = (
    b'{"id":"evt-000042","ts":1764160000.12,"label":true,"features":{"amount":12.5,"country":"FR",'
    b'"age":37,"is_new":false,"merchant":"m-1234","hour":13,"score":0.731,"channel":"web",'
    b'"device":"ios-17.2"}}'
)


def ev(**fields):
    return orjson.dumps({"id": "e1", "features": {"x": 1.0}, **fields})


def reason(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------- the ten malformed kinds

MALFORMED = {
    "not JSON": b'{"id": "e1", features: {}}',
    "array": b'[{"id": "e1", "features": {}}]',
    "missing id": b'{"features": {"x": 1}}',
    "features not an object": b'{"id": "e1", "features": [1, 2]}',
    "NaN": b'{"id": "e1", "features": {"x": NaN}}',
    "huge string": orjson.dumps({"id": "e1", "features": {"s": "a" * 5000}}),
    "10000 features": orjson.dumps({"id": "e1", "features": {f"f{i}": i for i in range(10_000)}}),
    "label a dict": b'{"id": "e1", "features": {}, "label": {"y": 1}}',
    "empty bytes": b"",
    "invalid UTF-8": b'{"id": "e\xff1", "features": {}}',
}

EXPECTED = {
    "not JSON": "not JSON: unexpected character",
    "array": "event must be a JSON object, got array",
    "missing id": "missing id",
    "features not an object": "features must be an object",
    "NaN": "feature 'x' is not finite (NaN/inf)",
    "huge string": "string feature 's' longer than 4096 characters",
    "10000 features": "too many features: 10000 > 1000",
    "label a dict": "label must be a bool, number or string",
    "empty bytes": "empty message",
    "invalid UTF-8": "invalid UTF-8",
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_event_raises_clear_reason(kind):
    with pytest.raises(BadInputError) as excinfo:
        decode_event(MALFORMED[kind], None, POS)
    assert reason(excinfo) == EXPECTED[kind]


def test_malformed_reasons_are_distinct():
    assert len(set(EXPECTED.values())) == len(EXPECTED)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "empty message"),  # tombstone
        (b"  \n", "empty message"),
        (b"nul", "not JSON: unexpected end of data"),
        (b'{"id": "e1"} x', "not JSON: unexpected content after document"),
        (b'"just a string"', "event must be a JSON object, got string"),
        (b"42", "event must be a JSON object, got number"),
        (b"null", "event must be a JSON object, got null"),
        (b'{"id": 42, "features": {}}', "id must be a non-empty string of at most 256 characters"),
        (b'{"id": "", "features": {}}', "id must be a non-empty string of at most 256 characters"),
        (
            orjson.dumps({"id": "i" * 257, "features": {}}),
            "id must be a non-empty string of at most 256 characters",
        ),
        (b'{"id": "e1"}', "missing features"),
        (b'{"id": "e1", "features": {"x": [1]}}', "feature 'x' has an unsupported type array"),
        (b'{"id": "e1", "features": {"x": {"a": 1}}}', "feature 'x' has an unsupported type object"),
        (b'{"id": "e1", "features": {"x": Infinity}}', "feature 'x' is not finite (NaN/inf)"),
        (b'{"id": "e1", "features": {"x": -Infinity}}', "feature 'x' is not finite (NaN/inf)"),
        (b'{"id": "e1", "features": {"x": 1e400}}', "feature 'x' is not finite (NaN/inf)"),
        (b'{"id": "e1", "features": {}, "ts": NaN}', "ts must be a finite number"),
        (b'{"id": "e1", "features": {}, "ts": "yesterday"}', "ts must be a finite number"),
        (b'{"id": "e1", "features": {}, "ts": true}', "ts must be a finite number"),
        (b'{"id": "e1", "features": {}, "label": NaN}', "label is not finite (NaN/inf)"),
        (b'{"id": "e1", "features": {}, "label": [true]}', "label must be a bool, number or string"),
        (b'{"id": "e1", "features": {}, "other": NaN}', "number is not finite (NaN/inf)"),
        (b'{"id": "e1", "features": {}, "other": 1e999}', "number is not finite (NaN/inf)"),
        (
            b'\xef\xbb\xbf{"id": "e1", "features": {}}',
            "not JSON: UTF-8 byte order mark (BOM) is not supported",
        ),
        (b'{"id": "\\ud800", "features": {}}', "not JSON: no low surrogate in string"),
        (b"[" * 5000, "not JSON: depth limit exceeded"),
    ],
)
def test_more_bad_events(value, expected):
    with pytest.raises(BadInputError) as excinfo:
        decode_event(value, None, POS)
    assert reason(excinfo) == expected


def test_orjson_rejects_non_finite_itself():
    # Why the codec re-parses on failure: orjson refuses these outright, stdlib json accepts them.
    for doc in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(doc)
        assert not math.isfinite(json.loads(doc))


def test_message_size_limit():
    big = orjson.dumps({"id": "e1", "features": {"s": "a" * 100}})
    with pytest.raises(BadInputError, match=r"^message larger than 50 bytes$"):
        decode_event(big, None, POS, Limits(max_message_bytes=50))
    with pytest.raises(BadInputError, match=r"^message larger than 1048576 bytes$"):
        decode_event(b" " * (DEFAULT_LIMITS.max_message_bytes + 1), None, POS)


def test_custom_limits():
    limits = Limits(max_id_chars=3, max_features=2, max_string_chars=4)
    assert decode_event(ev(id="abc", features={"a": "abcd", "b": 1}), None, POS, limits).id == "abc"
    with pytest.raises(BadInputError, match="at most 3 characters"):
        decode_event(ev(id="abcd"), None, POS, limits)
    with pytest.raises(BadInputError, match=r"too many features: 3 > 2"):
        decode_event(ev(id="a", features={"a": 1, "b": 2, "c": 3}), None, POS, limits)
    with pytest.raises(BadInputError, match=r"^string label longer than 4 characters$"):
        decode_event(ev(id="a", label="abcde"), None, POS, limits)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_limits_are_validated(bad):
    with pytest.raises(ConfigError):
        Limits(max_features=bad)


def test_long_feature_name_is_cut_in_the_reason():
    name = "n" * 200
    with pytest.raises(BadInputError) as excinfo:
        decode_event(orjson.dumps({"id": "e1", "features": {name: [1]}}), None, POS)
    assert reason(excinfo) == f"feature '{'n' * 64}…' has an unsupported type array"


@pytest.mark.parametrize("value", [1e101, -1e300, 10**101, 1.7976931348623157e308])
def test_a_number_that_could_overflow_a_model_is_bad_input(value):
    """1e155² is inf: one such event poisoned a frozen champion, and every copy of it, with NaN."""
    for features in ({"big": value}, {"big": value, "s": "text"}):  # the all-numbers path and the other
        with pytest.raises(BadInputError, match=r"^feature 'big' is larger than 1e\+100 in magnitude$"):
            decode_event(json.dumps({"id": "e1", "features": features}).encode(), None, POS)
    assert decode_event(orjson.dumps({"id": "e1", "features": {"x": 1e100, "b": True}}), None, POS)
    many = {f"x{i}": 1e99 for i in range(1000)}  # their norm is over the limit, none of them is
    assert decode_event(orjson.dumps({"id": "e1", "features": many}), None, POS).features == many


def test_bad_key_utf8():
    with pytest.raises(BadInputError, match=r"^invalid UTF-8 in message key$"):
        decode_event(ev(), b"\xff", POS)


# ---------------------------------------------------------------- valid events


def test_valid_event_round_trip():
    e = decode_event(
        b'{"id": "evt-42", "ts": 1764160000.12, "features": {"amount": 12.5, "country": "FR", '
        b'"n": 3, "new": false}, "label": true, "extra": {"ignored": [1]}}',
        b"user-7",
        ("events", 1, 1234),
    )
    assert e.id == "evt-42"
    assert e.ts == 1764160000.12
    assert e.features == {"amount": 12.5, "country": "FR", "n": 3, "new": False}
    assert e.label is True
    assert e.key == "user-7"
    assert e.position == ("events", 1, 1234)


def test_optional_fields_absent():
    e = decode_event(b'{"id": "e1", "features": {}}', None, None)
    assert (e.features, e.label, e.ts, e.key, e.position) == ({}, None, None, None, None)


def test_empty_key_is_no_key_and_unicode_key():
    assert decode_event(ev(), b"", POS).key is None
    assert decode_event(ev(), "über".encode(), POS).key == "über"


@pytest.mark.parametrize(
    ("ts", "why"),
    [
        (1764160000123, "; 1764160000123 looks like milliseconds"),
        (1764160000123456, "; 1764160000123456 looks like microseconds"),
        (-1.7e18, "; -1.7e+18 looks like nanoseconds"),
        (1e30, ""),
    ],
)
def test_ts_in_milliseconds_or_beyond_is_refused(ts, why):
    """One event in milliseconds would age every pending prediction by millennia."""
    expected = "ts must be seconds since the epoch (|ts| < 1e+11)" + why
    for decode in (lambda: decode_event(ev(ts=ts), None, POS),
                   lambda: decode_label(orjson.dumps({"id": "e1", "label": True, "ts": ts}), POS)):
        with pytest.raises(BadInputError) as excinfo:
            decode()
        assert reason(excinfo) == expected
    assert decode_event(ev(ts=99_999_999_999.5), None, POS).ts == 99_999_999_999.5
    assert decode_event(ev(ts=-5.0), None, POS).ts == -5.0


def test_int_ts_becomes_float():
    e = decode_event(ev(ts=1764160000), None, POS)
    assert e.ts == 1764160000.0 and type(e.ts) is float


def test_null_features_dropped():
    e = decode_event(b'{"id": "e1", "features": {"a": null, "b": 2, "c": null}}', None, POS)
    assert e.features == {"b": 2}


def test_null_label_means_unlabelled():
    assert decode_event(ev(label=None), None, POS).label is None


@pytest.mark.parametrize("label", [True, False, 0, 1, 3, -2.5, 0.0, "cat", ""])
def test_label_kinds(label):
    got = decode_event(ev(label=label), None, POS).label
    assert got == label and type(got) is type(label)


def test_unicode_strings_and_limits_count_characters():
    text = "é" * 4096  # 8192 bytes, 4096 characters: allowed
    assert decode_event(ev(features={"s": text}), None, POS).features["s"] == text


# ---------------------------------------------------------------- labels


def test_label_decodes():
    lab = decode_label(b'{"id": "evt-42", "label": false, "ts": 5}', ("labels", 0, 3))
    assert (lab.id, lab.label, lab.ts, lab.position) == ("evt-42", False, 5.0, ("labels", 0, 3))
    assert decode_label(b'{"id": "e", "label": "spam"}', None).label == "spam"


@pytest.mark.parametrize(
    "value, expected",
    [
        (b'{"id": "e"}', "missing label"),
        (b'{"id": "e", "label": null}', "missing label"),
        (b'{"label": 1}', "missing id"),
        (b'{"id": "e", "label": {}}', "label must be a bool, number or string"),
        (b'{"id": "e", "label": NaN}', "label is not finite (NaN/inf)"),
        (b"[1]", "label message must be a JSON object, got array"),
        (b"", "empty message"),
    ],
)
def test_bad_labels(value, expected):
    with pytest.raises(BadInputError) as excinfo:
        decode_label(value, POS)
    assert reason(excinfo) == expected


# ---------------------------------------------------------------- control topic


def test_command_decodes():
    raw = {
        "type": "promote",
        "command_id": "2b1f",
        "issued_by": "alice",
        "reason": "manual",
        "expected_champion": 7,
        "ts": 1764160001.0,
        "signature": "ab",
    }
    cmd, fields = decode_command(orjson.dumps(raw))
    assert cmd == Command(
        type="promote",
        command_id="2b1f",
        issued_by="alice",
        reason="manual",
        expected_champion=7,
        ts=1764160001.0,
        signature="ab",
    )
    assert fields == raw


def test_command_defaults_and_rollback_to_version():
    cmd, _ = decode_command(b'{"type": "rollback", "command_id": "c", "to_version": 3}')
    assert cmd == Command(type="rollback", command_id="c", to_version=3)
    assert (cmd.issued_by, cmd.reason, cmd.expected_champion) == ("operator", "", None)


def test_set_split():
    cmd, _ = decode_command(b'{"type": "set_split", "command_id": "c", "percent": 12.5}')
    assert cmd.percent == 12.5
    assert decode_command(b'{"type": "set_split", "command_id": "c", "percent": 100}')[0].percent == 100.0


@pytest.mark.parametrize(
    "value, expected",
    [
        (b'{"type": "set_split", "command_id": "c"}', "set_split needs percent"),
        (
            b'{"type": "set_split", "command_id": "c", "percent": 101}',
            "percent must be a number between 0 and 100",
        ),
        (
            b'{"type": "set_split", "command_id": "c", "percent": -1}',
            "percent must be a number between 0 and 100",
        ),
        (b'{"type": "set_split", "command_id": "c", "percent": "5"}', "percent must be a finite number"),
        (b'{"type": "set_split", "command_id": "c", "percent": NaN}', "percent must be a finite number"),
        (b'{"type": "launch_missiles", "command_id": "c"}', "unknown control message type 'launch_missiles'"),
        (b'{"command_id": "c"}', "missing type"),
        (b'{"type": 3}', "type must be a string"),
        (b'{"type": ["promote"]}', "type must be a string"),
        (b'{"type": {}}', "type must be a string"),
        (b'{"type": "promote"}', "missing command_id"),
        (
            b'{"type": "promote", "command_id": 5}',
            "command_id must be a non-empty string of at most 256 characters",
        ),
        (
            b'{"type": "promote", "command_id": "c", "expected_champion": "7"}',
            "expected_champion must be an integer",
        ),
        (
            b'{"type": "promote", "command_id": "c", "expected_champion": 7.0}',
            "expected_champion must be an integer",
        ),
        (b'{"type": "rollback", "command_id": "c", "to_version": true}', "to_version must be an integer"),
        (
            b'{"type": "promote", "command_id": "c", "issued_by": null}',
            "issued_by must be a string of at most 4096 characters",
        ),
        (b'{"type": "promote", "command_id": "c", "signature": 1}', "signature must be a string"),
        (b'{"type": "promoted", "champion": "8"}', "champion must be an integer"),
        (
            b'{"type": "promoted", "offsets": {"events:0": "1"}}',
            "offsets must be an object of integer offsets",
        ),
        (b'{"type": "status_report", "detail": []}', "detail must be an object"),
        (b'{"type": "status_report", "labelled": -1}', "labelled must be an integer >= 0"),
        (b'{"type": "command_applied", "split": 120}', "split must be a number between 0 and 100"),
        (b'{"type": "command_applied", "split": "5"}', "split must be a finite number"),
        (b"[]", "control message must be a JSON object, got array"),
        (b"{", "not JSON: unexpected end of data"),
    ],
)
def test_bad_control_messages(value, expected):
    with pytest.raises(BadInputError) as excinfo:
        decode_command(value)
    assert reason(excinfo) == expected


@pytest.mark.parametrize(("value", "answerable"), [
    (b'{"type": "set_split", "command_id": "c-7", "percent": 150}', True),
    (b'{"type": "frobnicate", "command_id": "c-7"}', False),  # perhaps a newer release's event
    (b'{"type": "promote", "command_id": "c-7", "expected_champion": "1"}', True),
    (b'{"type": "promote", "expected_champion": "1"}', False),  # no id to answer
    (b'{"type": "promoted", "champion": "8"}', False),  # a lifecycle event: nobody waits for it
])
def test_an_invalid_command_with_an_id_can_be_answered(value, answerable):
    with pytest.raises(BadInputError) as excinfo:
        decode_command(value)
    assert isinstance(excinfo.value, InvalidCommandError) is answerable
    if answerable:
        assert excinfo.value.command_id == "c-7" and excinfo.value.command_type in value.decode()


def test_lifecycle_decodes_and_round_trips():
    e = LifecycleEvent(
        type="promoted",
        command_id="c-1",
        champion=8,
        challenger=9,
        detail={"statistic": 3.2, "from": 7},
        offsets={"events:0": 41, "labels:0": 7},
        labelled=500,
        ts=1764160002.5,
        split=12.5,
    )
    raw = encode_lifecycle(e)
    assert orjson.loads(raw) == {
        "type": "promoted",
        "command_id": "c-1",
        "champion": 8,
        "challenger": 9,
        "detail": {"statistic": 3.2, "from": 7},
        "offsets": {"events:0": 41, "labels:0": 7},
        "labelled": 500,
        "ts": 1764160002.5,
        "split": 12.5,
    }
    decoded, fields = decode_command(raw)
    assert decoded == e
    assert fields == orjson.loads(raw)


def test_lifecycle_omits_none_and_defaults():
    raw = encode_lifecycle(LifecycleEvent(type="drift_detected"))
    assert raw == b'{"type":"drift_detected","detail":{},"offsets":{},"labelled":0}'
    assert decode_command(raw)[0] == LifecycleEvent(type="drift_detected")
    decoded, _ = decode_command(
        b'{"type": "command_rejected", "command_id": "c", "detail": {"reason": "stale"}}'
    )
    assert decoded == LifecycleEvent(type="command_rejected", command_id="c", detail={"reason": "stale"})


def test_command_round_trip_unsigned():
    c = Command(type="set_split", command_id="c-9", issued_by="bob", percent=5.0)
    raw = encode_command(c, None)
    assert orjson.loads(raw) == {
        "type": "set_split",
        "command_id": "c-9",
        "issued_by": "bob",
        "reason": "",
        "percent": 5.0,
    }
    assert decode_command(raw)[0] == c


# ---------------------------------------------------------------- predictions


def test_encode_prediction_matches_the_architecture_example():
    p = Prediction(
        id="evt-42",
        ts=1764160000.12,
        served_by="champion",
        model_version=7,
        prediction=True,
        proba={True: 0.91, False: 0.09},
        shadow={"model_version": 8, "prediction": False},
        key="user-1",
    )
    expected = (
        '{"id": "evt-42", "ts": 1764160000.12, "served_by": "champion", "model_version": 7,\n'
        ' "prediction": true, "proba": {"true": 0.91, "false": 0.09},\n'
        ' "shadow": {"model_version": 8, "prediction": false}}'
    )  # verbatim from ARCHITECTURE.md §2
    assert encode_prediction(p) == json.dumps(json.loads(expected), separators=(",", ":")).encode()


def test_encode_prediction_class_keys_and_native_values():
    import numpy as np

    p = Prediction(
        id="e",
        served_by="challenger",
        model_version=1,
        prediction=np.int64(2),
        proba={0: 0.25, 2: np.float64(0.5), "cat": 0.125, None: 0.0, np.bool_(True): 0.125},
    )
    assert orjson.loads(encode_prediction(p)) == {
        "id": "e",
        "served_by": "challenger",
        "model_version": 1,
        "prediction": 2,
        "proba": {"0": 0.25, "2": 0.5, "cat": 0.125, "null": 0.0, "true": 0.125},
    }
    assert b'"ts"' not in encode_prediction(p) and b'"shadow"' not in encode_prediction(p)
    assert (
        orjson.loads(encode_prediction(Prediction("e", "champion", 1, "spam", {"spam": 1.0})))["prediction"]
        == "spam"
    )


def test_unserialisable_prediction_is_bad_input():
    with pytest.raises(BadInputError, match="prediction is not JSON-serialisable"):
        encode_prediction(Prediction("e", "champion", 1, object(), {}))


# ---------------------------------------------------------------- signatures


def test_sign_verify_round_trip():
    raw = encode_command(
        Command(type="promote", command_id="c-1", issued_by="alice", expected_champion=7), SECRET
    )
    cmd, fields = decode_command(raw)
    assert cmd.signature is not None and len(cmd.signature) == 64
    assert verify_command(fields, SECRET)
    assert not verify_command(fields, b"another secret")
    # after a rotation: the new secret and the previous ones
    assert verify_command(fields, (b"new secret", SECRET))
    assert not verify_command(fields, (b"new secret", b"another secret"))


@pytest.mark.parametrize(
    "field, value",
    [("expected_champion", 8), ("type", "rollback"), ("issued_by", "mallory"), ("reason", "x"), ("extra", 1)],
)
def test_tampered_command_fails(field, value):
    _, fields = decode_command(
        encode_command(Command(type="promote", command_id="c-1", expected_champion=7), SECRET)
    )
    tampered = {**fields, field: value}
    assert not verify_command(tampered, SECRET)
    # and through bytes, as it would arrive
    assert not verify_command(decode_command(orjson.dumps(tampered))[1], SECRET)


@pytest.mark.parametrize("signature", [None, 5, "", "zz", "é" * 64, "0" * 64])
def test_missing_or_malformed_signature_is_false(signature):
    fields = {"type": "promote", "command_id": "c-1"}
    if signature is not None:
        fields["signature"] = signature
    assert verify_command(fields, SECRET) is False


def test_a_deeply_nested_field_is_a_bad_signature_not_an_exception():
    """orjson reads nesting up to 1024 levels; the stdlib JSON that signatures cover would
    overflow Python's stack, which killed a worker requiring signed commands (on every restart)."""
    value = b'{"type":"status","command_id":"c1","signature":"00","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert verify_command(decode_command(value)[1], SECRET) is False


def test_a_lifecycle_event_is_signed_with_the_workers_secret():
    event = LifecycleEvent(type="status_report", champion=3, challenger=4, split=25.0, labelled=9,
                           detail={"counts": {"events": 10}, "classes": {True: 0.5}})
    before = time.time()
    _, fields = decode_command(encode_lifecycle(event, SECRET))
    assert verify_command(fields, SECRET) and not verify_command(fields, b"another secret")
    assert not verify_command({**fields, "champion": 1}, SECRET)
    assert before - 0.001 <= fields["signed_at"] <= time.time()  # a copy written again is older
    assert not verify_command({**fields, "signed_at": fields["signed_at"] + 60}, SECRET)
    assert "signature" not in decode_command(encode_lifecycle(event))[1]


def test_uppercase_hex_signature_is_accepted():
    fields = {"type": "snapshot", "command_id": "c-2"}
    fields["signature"] = sign_command(fields, SECRET).upper()
    assert verify_command(fields, SECRET)


def test_empty_secret_is_a_config_error():
    with pytest.raises(ConfigError):
        sign_command({"type": "status", "command_id": "c"}, b"")
    with pytest.raises(ConfigError):
        sign_command({"type": "status", "command_id": "c"}, "")


def test_a_text_secret_signs_as_its_utf8_bytes():
    """As the README's example and `--secret` give it."""
    cmd = {"type": "status", "command_id": "c"}
    assert sign_command(cmd, "sécret") == sign_command(cmd, "sécret".encode())


def test_unsignable_command_is_bad_input():
    with pytest.raises(BadInputError, match="cannot be signed"):
        sign_command({"type": "set_split", "command_id": "c", "percent": float("nan")}, SECRET)


def _stdlib_sign(cmd: dict, secret: bytes) -> str:
    # The recipe from sign_command's docstring, standard library only.
    body = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret, body.encode("utf-8"), hashlib.sha256).hexdigest()


ORDINARY = [
    {
        "type": "promote",
        "command_id": "2b1f…",
        "issued_by": "alice",
        "reason": "manual",
        "expected_champion": 7,
        "ts": 1764160001.0,
    },
    {
        "type": "rollback",
        "command_id": "c",
        "issued_by": "worker-ü",
        "reason": 'drift: p<0.01 "quoted"\n',
        "to_version": 3,
        "ts": 1764160001.123456,
    },
    {"type": "set_split", "command_id": "c", "percent": 12.5, "ts": 1764160001},
    {"type": "set_split", "command_id": "c", "percent": 0.1},
    {"type": "status", "command_id": "c", "reason": "日本 \t\u2028 </script> & \x01"},
]


@pytest.mark.parametrize("cmd", ORDINARY)
def test_stdlib_signature_equals_sign_command(cmd):
    assert _stdlib_sign(cmd, SECRET) == sign_command(cmd, SECRET)
    # A command signed by a stdlib-only producer verifies after the wire round trip.
    message = json.dumps({**cmd, "signature": _stdlib_sign(cmd, SECRET)}).encode()
    assert verify_command(decode_command(message)[1], SECRET)
    # For ordinary commands orjson's canonical form is byte-identical too.
    body = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert orjson.dumps(cmd, option=orjson.OPT_SORT_KEYS) == body


def test_orjson_and_stdlib_differ_for_tiny_floats_so_stdlib_is_canonical():
    cmd = {"type": "set_split", "command_id": "c", "percent": 0.00001}
    stdlib = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert b'"percent":1e-05' in stdlib
    assert b'"percent":0.00001' in orjson.dumps(cmd, option=orjson.OPT_SORT_KEYS)
    # Signed via encode_command (written by orjson), verified after the round trip anyway.
    raw = encode_command(Command(type="set_split", command_id="c", percent=0.00001), SECRET)
    assert verify_command(decode_command(raw)[1], SECRET)


def test_signature_does_not_depend_on_key_order_or_layout():
    a = {"type": "promote", "command_id": "c", "expected_champion": 7}
    b = {"expected_champion": 7, "command_id": "c", "type": "promote", "signature": "ignored"}
    assert sign_command(a, SECRET) == sign_command(b, SECRET)


# ---------------------------------------------------------------- DLQ headers


def test_dlq_headers():
    assert dlq_headers("missing id", ("events", 3, 1234)) == [
        ("dlq.error", b"missing id"),
        ("dlq.original.topic", b"events"),
        ("dlq.original.partition", b"3"),
        ("dlq.original.offset", b"1234"),
    ]


def test_dlq_error_truncated_and_utf8():
    headers = dict(dlq_headers("é" * 5000, ("events", 0, 0)))
    assert headers["dlq.error"].decode("utf-8") == "é" * 1000


def test_every_bad_input_reason_fits_a_header():
    for kind, value in MALFORMED.items():
        with pytest.raises(BadInputError) as excinfo:
            decode_event(value, None, POS)
        assert len(reason(excinfo)) < 120, kind


def test_mutated_messages_only_ever_raise_bad_input():
    # Deterministic fuzz: random byte edits of valid messages either decode or raise
    # BadInputError with a short reason — never another exception.
    import random

    rng = random.Random(0)
    seeds = [
        BENCH_EVENT,
        b'{"id":"e","label":false,"ts":1}',
        b'{"type":"set_split","command_id":"c","percent":5,"signature":"ab"}',
        b'{"type":"promoted","champion":8,"detail":{"a":[1,2]},"offsets":{"events:0":4},"labelled":3}',
    ]
    alphabet = b'{}[]":,0123456789.eE+-NaInfinityultrsfe\\ \xff\x00u'
    decoders = [lambda b: decode_event(b, b"k", POS), lambda b: decode_label(b, POS), decode_command]
    for _ in range(3000):
        s = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            j = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4:
                s[j] = rng.choice(alphabet)
            elif op < 0.7:
                del s[j]
            else:
                s.insert(j, rng.choice(alphabet))
        for decode in decoders:
            try:
                decode(bytes(s))
            except BadInputError as exc:
                assert 0 < len(str(exc)) < 200
