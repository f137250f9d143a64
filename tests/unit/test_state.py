import hashlib
import json
import pickle
import random

import pytest
import river
from river import linear_model, preprocessing

import worker
from worker.core import state
from worker.core.chunks import HEADER_SIZE, chunk_info, join_chunks, split_chunks
from worker.errors import ConfigError, SnapshotError

SECRET = b"correct horse battery staple"


class CreatesFile:
    """A pickle that creates a file when it is loaded: stands for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def forge(payload: bytes, secret: bytes, *, signature: bytes | None = None, **header) -> bytes:
    """Build an envelope around any payload, as an attacker (or a future format) would."""
    fields = {
        "format": state.FORMAT_VERSION,
        "worker": worker.__version__,
        "river": river.__version__,
        "pickle_protocol": 5,
        "payload_len": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "meta": {},
    }
    fields.update(header)
    line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    if signature is None:
        signature = state._sign(secret, line, payload)
    return state.MAGIC + signature + b"\n" + line + payload


@pytest.fixture
def no_unpickle(monkeypatch):
    """Fail the test if anything reaches pickle.loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads was called on an unverified snapshot")

    monkeypatch.setattr(state.pickle, "loads", refuse)


def split_envelope(blob: bytes) -> tuple[bytes, bytes, bytes]:
    rest = blob[len(state.MAGIC) :]
    sig, rest = rest.split(b"\n", 1)
    line, payload = rest.split(b"\n", 1)
    return sig, line + b"\n", payload


# --- round trips ------------------------------------------------------------------


def test_round_trip_plain_objects():
    obj = {"a": [1, 2.5, "x"], "b": (None, True), "c": {1, 2}}
    assert state.load(state.dump(obj, SECRET), SECRET) == obj


def test_str_secret_is_utf8_of_bytes_secret():
    blob = state.dump([1], "sécret")
    assert state.load(blob, "sécret".encode()) == [1]


def test_dump_is_deterministic_and_has_no_clock():
    obj = {"x": list(range(100))}
    assert state.dump(obj, SECRET) == state.dump(obj, SECRET)
    assert "created" not in state.read_meta(state.dump(obj, SECRET))


def test_read_meta_shows_versions_without_secret():
    blob = state.dump("x", SECRET, meta={"created_at": 1764160000.5, "offsets": {"events:0": 9}})
    meta = state.read_meta(blob)
    assert meta["format"] == state.FORMAT_VERSION
    assert meta["worker"] == worker.__version__
    assert meta["river"] == river.__version__
    assert meta["pickle_protocol"] == 5
    assert meta["meta"] == {"created_at": 1764160000.5, "offsets": {"events:0": 9}}
    assert meta["payload_len"] == len(pickle.dumps("x", protocol=5))


def test_meta_must_be_json():
    with pytest.raises(SnapshotError, match="JSON"):
        state.dump(1, SECRET, meta={"bad": object()})
    with pytest.raises(SnapshotError, match="JSON"):
        state.dump(1, SECRET, meta={"nan": float("nan")})


def test_river_pipeline_round_trip_predicts_and_learns_the_same():
    rng = random.Random(42)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    stream = []
    for _ in range(600):
        x = {"a": rng.gauss(0, 1), "b": rng.gauss(5, 3), "c": rng.random()}
        stream.append((x, x["a"] + 0.2 * x["b"] - 1 + rng.gauss(0, 0.5) > 0))
    for x, y in stream[:500]:
        model.learn_one(x, y)

    restored = state.load(state.dump(model, SECRET), SECRET)

    assert restored is not model
    for x, _ in stream[500:]:
        assert restored.predict_proba_one(x) == model.predict_proba_one(x)
    for x, y in stream[500:]:  # and it keeps learning identically
        model.learn_one(x, y)
        restored.learn_one(x, y)
    assert restored.predict_proba_one(stream[0][0]) == model.predict_proba_one(stream[0][0])


# --- refusals: nothing is unpickled --------------------------------------------------


def test_evil_pickle_really_creates_a_file(tmp_path):
    # sanity check of the fixture used below: unpickling it does run code
    target = tmp_path / "proof"
    pickle.loads(pickle.dumps(CreatesFile(target))).close()
    assert target.exists()


def test_tampered_payload_with_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    genuine = state.dump({"champion": 1}, SECRET)
    sig, line, _ = split_envelope(genuine)
    evil = pickle.dumps(CreatesFile(target), protocol=5)
    header = json.loads(line)
    header.update(payload_len=len(evil), payload_sha256=hashlib.sha256(evil).hexdigest())
    # keep the genuine signature, fix up length and hash: only the HMAC can tell
    tampered = forge(evil, SECRET, signature=sig, **header)

    with pytest.raises(SnapshotError, match="signature mismatch: tampered"):
        state.load(tampered, SECRET)
    assert not target.exists()


def test_malicious_snapshot_signed_with_another_secret_is_refused(tmp_path):
    target = tmp_path / "pwned"
    forged = forge(pickle.dumps(CreatesFile(target), protocol=5), b"attacker's secret")
    with pytest.raises(SnapshotError, match="signed with another secret"):
        state.load(forged, SECRET)
    assert not target.exists()


def test_snapshot_signed_with_another_secret_is_refused(no_unpickle):
    with pytest.raises(SnapshotError, match="signature mismatch"):
        state.load(state.dump({"v": 1}, b"other secret"), SECRET)


def test_unsigned_raw_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(SnapshotError, match="not a worker snapshot.*unsigned pickle"):
        state.load(pickle.dumps(CreatesFile(target)), SECRET)
    assert not target.exists()


def test_envelope_without_signature_is_refused(tmp_path):
    target = tmp_path / "pwned"
    unsigned = forge(pickle.dumps(CreatesFile(target), protocol=5), SECRET, signature=b"")
    with pytest.raises(SnapshotError, match="unsigned snapshot"):
        state.load(unsigned, SECRET)
    assert not target.exists()


@pytest.mark.parametrize("signature", [b"00" * 31, b"zz" * 32, b"AB" * 32, b"0" * 100])
def test_malformed_signature_is_refused(no_unpickle, signature):
    with pytest.raises(SnapshotError, match="signature"):
        state.load(forge(pickle.dumps(1), SECRET, signature=signature), SECRET)


def test_tampered_header_is_refused(no_unpickle):
    blob = state.dump({"v": 1}, SECRET, meta={"offsets": {"events:0": 100}})
    tampered = blob.replace(b'"events:0":100', b'"events:0":999')
    assert tampered != blob
    with pytest.raises(SnapshotError, match="signature mismatch"):
        state.load(tampered, SECRET)


def test_every_single_bit_flip_is_refused(no_unpickle):
    blob = state.dump({"v": [1, 2, 3]}, SECRET)
    for i in range(len(blob)):
        flipped = bytearray(blob)
        flipped[i] ^= 0x01
        with pytest.raises(SnapshotError):
            state.load(bytes(flipped), SECRET)


def test_every_truncation_is_refused(no_unpickle):
    blob = state.dump({"v": "x" * 50}, SECRET)
    for n in range(len(blob)):
        with pytest.raises(SnapshotError):
            state.load(blob[:n], SECRET)
    with pytest.raises(SnapshotError, match="truncated snapshot: .* payload bytes"):
        state.load(blob[:-1], SECRET)


def test_trailing_bytes_are_refused(no_unpickle):
    with pytest.raises(SnapshotError, match="after the payload"):
        state.load(state.dump(1, SECRET) + b"junk", SECRET)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a worker snapshot: empty"),
        (b"hello world", "not a worker snapshot"),
        (b"\x00" * 1000, "not a worker snapshot"),
        ("a str", "not a worker snapshot"),
        (None, "not a worker snapshot"),
        (state.MAGIC[:4], "truncated"),
    ],
)
def test_garbage_is_refused(no_unpickle, data, message):
    with pytest.raises(SnapshotError, match=message):
        state.load(data, SECRET)


@pytest.mark.parametrize("header", [b"{not json", b"[" * 200_000], ids=["not-json", "deeply-nested"])
def test_corrupt_header_json_is_refused(no_unpickle, header):
    blob = state.MAGIC + b"ab" * 32 + b"\n" + header + b"\n" + b"payload"
    with pytest.raises(SnapshotError, match="corrupt snapshot header"):
        state.load(blob, SECRET)
    with pytest.raises(SnapshotError, match="corrupt snapshot header"):
        state.read_meta(blob)


def test_unsupported_format_version_is_refused(no_unpickle):
    future = forge(pickle.dumps(1), SECRET, format=2)
    with pytest.raises(SnapshotError, match="unsupported snapshot format 2"):
        state.load(future, SECRET)
    assert state.read_meta(future)["format"] == 2  # still displayable


def test_verified_but_unloadable_payload_says_which_versions():
    payload = b"\x80\x05cno_such_module_xyz\nThing\n."  # a class that no longer exists
    with pytest.raises(SnapshotError, match="verified but cannot be unpickled.*river"):
        state.load(forge(payload, SECRET, river="0.1.0"), SECRET)


@pytest.mark.parametrize("secret", [b"", "", None, 123])
def test_empty_or_bad_secret_is_refused(secret):
    with pytest.raises(ConfigError):
        state.dump(1, secret)
    with pytest.raises(ConfigError):
        state.load(state.dump(1, SECRET), secret)


# --- chunks ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 70, 71, 72, 1000, 10_007])
@pytest.mark.parametrize("size", [HEADER_SIZE + 1, 100, 1 << 20])
def test_chunks_round_trip(length, size):
    data = random.Random(length).randbytes(length)
    parts = split_chunks(data, size)
    assert all(len(p) <= size for p in parts)
    assert len(parts) == max(1, -(-length // (size - HEADER_SIZE)))
    assert join_chunks(parts) == data
    shuffled = parts[:]
    random.Random(0).shuffle(shuffled)
    assert join_chunks(shuffled) == data


def test_chunk_info_groups_chunks():
    a, b = split_chunks(b"a" * 300, 100), split_chunks(b"b" * 300, 100)
    infos = [chunk_info(p) for p in a]
    assert [i.index for i in infos] == [0, 1, 2, 3, 4]
    assert {i.count for i in infos} == {5}
    assert len({i.snapshot_id for i in infos}) == 1
    assert chunk_info(b[0]).snapshot_id != infos[0].snapshot_id
    assert split_chunks(b"a" * 300, 100) == a  # deterministic


def test_missing_chunk_is_detected():
    parts = split_chunks(b"z" * 1000, 100)
    with pytest.raises(SnapshotError, match=r"missing chunk\(s\) \[3\] of 15"):
        join_chunks(parts[:3] + parts[4:])
    with pytest.raises(SnapshotError, match="missing"):
        join_chunks(parts[:-1])
    with pytest.raises(SnapshotError, match="no snapshot chunks"):
        join_chunks([])


def test_a_chunk_header_claiming_billions_of_chunks_is_refused_at_once():
    """The count in a chunk header is not signed: walking range(count) ran out of memory."""
    import struct
    import time

    part = split_chunks(b"payload", 100)[0]
    forged = part[:25] + struct.pack(">I", 2**32 - 1) + part[29:]  # the count field of the header
    began = time.monotonic()
    with pytest.raises(SnapshotError, match=r"missing chunk\(s\) \[1, 2, .*\]\.\.\. of 4294967295"):
        join_chunks([forged])
    assert time.monotonic() - began < 1


def test_duplicate_chunk_is_tolerated_conflicting_one_is_not():
    parts = split_chunks(b"q" * 500, 100)
    assert join_chunks(parts + parts[:2]) == b"q" * 500
    bad = bytearray(parts[1])
    bad[-1] ^= 0xFF
    with pytest.raises(SnapshotError, match="two different chunks with index 1"):
        join_chunks([*parts, bytes(bad)])


def test_chunks_of_another_snapshot_are_refused():
    a, b = split_chunks(b"a" * 300, 100), split_chunks(b"b" * 300, 100)
    with pytest.raises(SnapshotError, match="different snapshots"):
        join_chunks(a[:2] + b[2:])


def test_corrupt_chunk_body_is_detected():
    parts = split_chunks(b"m" * 300, 100)
    bad = bytearray(parts[2])
    bad[-1] ^= 0xFF
    parts[2] = bytes(bad)
    with pytest.raises(SnapshotError, match="do not match"):
        join_chunks(parts)


@pytest.mark.parametrize("part", [b"", b"short", b"XXXX" + b"\x00" * 40])
def test_garbage_chunk_is_refused(part):
    with pytest.raises(SnapshotError, match="not a snapshot chunk"):
        join_chunks([part])


def test_corrupt_chunk_header_is_refused():
    part = split_chunks(b"abc", 100)[0]
    with pytest.raises(SnapshotError, match="unsupported snapshot chunk version"):
        chunk_info(part[:4] + b"\x09" + part[5:])
    with pytest.raises(SnapshotError, match="index 5 of 1"):
        chunk_info(part[:21] + (5).to_bytes(4, "big") + part[25:])


@pytest.mark.parametrize("size", [0, HEADER_SIZE, -5, 1.5, True])
def test_bad_chunk_size(size):
    with pytest.raises(ConfigError):
        split_chunks(b"x", size)


def test_signed_snapshot_through_chunks():
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    model.learn_one({"x": 1.0}, True)
    blob = state.dump(model, SECRET)
    restored = state.load(join_chunks(split_chunks(blob, 256)), SECRET)
    assert restored.predict_proba_one({"x": 2.0}) == model.predict_proba_one({"x": 2.0})


def test_a_rotation_accepts_the_previous_secrets_and_only_them():
    blob = state.dump({"v": 1}, b"old")
    assert state.load(blob, [b"new", b"old"]) == {"v": 1}
    with pytest.raises(SnapshotError, match="signed with another secret"):
        state.load(blob, [b"new", b"other"])
    with pytest.raises(ConfigError, match="no snapshot secret"):
        state.load(blob, [])
    with pytest.raises(ConfigError, match="empty snapshot secret"):
        state.load(blob, [b"new", b""])
