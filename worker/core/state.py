"""Signed snapshots: pickle, but never unpickle anything we did not sign.

A snapshot holds river objects, and river objects only round-trip through pickle —
which runs arbitrary code on load. Anyone who can write to the ``models`` or
``worker-state`` topic (or the snapshot directory) could otherwise run code in the
worker. So every snapshot is signed with HMAC-SHA256 under a configured secret, and
:func:`load` checks the envelope and the signature *before* handing a single byte to
``pickle`` (ARCHITECTURE.md §4).

Layout (self-describing, so a human with ``head -c 300`` sees what it is)::

    WKSNAP1\\n
    <64 hex chars: HMAC-SHA256(secret, magic + header line + payload)>\\n
    {"format": 1, "worker": ..., "river": ..., "payload_len": ..., ...}\\n
    <payload: pickle protocol 5>

The header is canonical JSON (sorted keys, no spaces) and carries no creation time
unless the caller puts one in ``meta``, so dumping the same state twice gives the
same bytes — recovery can be checked byte for byte.

>>> from worker.core import state
>>> blob = state.dump({"champion": 7}, b"s3cret", meta={"offsets": {"events:0": 42}})
>>> blob[:8]
b'WKSNAP1\\n'
>>> state.load(blob, b"s3cret")
{'champion': 7}
>>> state.read_meta(blob)["meta"]
{'offsets': {'events:0': 42}}
>>> state.load(blob, b"another secret")
Traceback (most recent call last):
...
worker.errors.SignatureError: signature mismatch: tampered, or signed with another secret

When the secret is rotated, :func:`load` takes the new one and the previous ones: a
snapshot signed with any of them is accepted (:func:`dump` signs with one only).

>>> state.load(blob, [b"new secret", b"s3cret"])
{'champion': 7}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import platform
from collections.abc import Sequence
from typing import Any

import river

import worker
from worker.errors import ConfigError, SignatureError, SnapshotError

__all__ = ["FORMAT_VERSION", "MAGIC", "dump", "load", "read_meta"]

MAGIC = b"WKSNAP1\n"
FORMAT_VERSION = 1
PICKLE_PROTOCOL = 5
_SIG_HEX_LEN = 64  # sha256 digest in hex
_MAX_HEADER = 1 << 20  # a header line is small; don't scan a 1 GiB garbage blob for "\n"


def secret_key(secret: bytes | str, what: str = "snapshot") -> bytes:
    """The HMAC key: bytes, or text as the command line takes it (``--secret``, UTF-8)."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes | bytearray):
        raise ConfigError(f"the {what} secret must be bytes or str, not {type(secret).__name__}")
    if not secret:
        raise ConfigError(f"an empty {what} secret is refused: configure a secret")
    return bytes(secret)


def _sign(key: bytes, header_line: bytes, payload: bytes) -> bytes:
    mac = hmac.new(key, MAGIC, "sha256")
    mac.update(header_line)
    mac.update(payload)
    return mac.hexdigest().encode("ascii")


def dump(obj: Any, secret: bytes | str, *, meta: dict | None = None) -> bytes:
    """Pickle ``obj`` and wrap it in a signed envelope.

    ``meta`` (JSON-serialisable: offsets, created-at, engine version...) is stored in
    the header, covered by the signature, and readable without unpickling.
    """
    key = secret_key(secret)
    try:
        payload = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        raise SnapshotError(f"cannot pickle the snapshot: {exc}") from exc
    header = {
        "format": FORMAT_VERSION,
        "worker": worker.__version__,
        "river": river.__version__,
        "python": platform.python_version(),
        "pickle_protocol": PICKLE_PROTOCOL,
        "payload_len": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "meta": meta or {},
    }
    try:
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot meta is not JSON-serialisable: {exc}") from exc
    header_line = text.encode("utf-8") + b"\n"
    return MAGIC + _sign(key, header_line, payload) + b"\n" + header_line + payload


def _parse(data: bytes) -> tuple[bytes, bytes, dict, bytes]:
    """Split the envelope into (signature, header line, header, payload). Trusts nothing."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SnapshotError(f"not a worker snapshot: got {type(data).__name__}, not bytes")
    data = bytes(data)
    if not data:
        raise SnapshotError("not a worker snapshot: empty input")
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise SnapshotError("truncated snapshot: cut inside the magic prefix")
        hint = " (a raw, unsigned pickle?)" if data[:1] == b"\x80" else ""
        raise SnapshotError(f"not a worker snapshot: bad magic prefix{hint}")
    sig_end = data.find(b"\n", len(MAGIC), len(MAGIC) + _SIG_HEX_LEN + 1)
    if sig_end < 0:
        if len(data) <= len(MAGIC) + _SIG_HEX_LEN:
            raise SnapshotError("truncated snapshot: cut inside the signature")
        raise SnapshotError("malformed snapshot signature")
    signature = data[len(MAGIC) : sig_end]
    if not signature:
        raise SnapshotError("unsigned snapshot: refused (it would run code when unpickled)")
    if len(signature) != _SIG_HEX_LEN or not all(c in b"0123456789abcdef" for c in signature):
        raise SnapshotError("malformed snapshot signature")
    start = sig_end + 1
    header_end = data.find(b"\n", start, start + _MAX_HEADER)
    if header_end < 0:
        raise SnapshotError("truncated or corrupt snapshot header")
    header_line = data[start : header_end + 1]
    try:
        header = json.loads(header_line)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # read before the signature is checked
        raise SnapshotError(f"corrupt snapshot header: {exc}") from None
    if not isinstance(header, dict):
        raise SnapshotError("corrupt snapshot header: not a JSON object")
    return signature, header_line, header, data[header_end + 1 :]


def read_meta(data: bytes) -> dict:
    """The header (versions, payload size, ``meta``) *without* verifying anything.

    UNTRUSTED until :func:`verify` has accepted ``data``: base a decision on it only then
    (recovery reads which progress records a snapshot covers this way, after verifying).
    """
    return _parse(data)[2]


def load(data: bytes, secret: bytes | str | Sequence[bytes | str]) -> Any:
    """Verify a snapshot made by :func:`dump` and return the unpickled object.

    Raises `SnapshotError` for anything that is not an intact snapshot signed with
    ``secret`` (or with one of several: the current secret and the previous ones) —
    checked in full before unpickling.
    """
    header, payload = _verified(data, secret)
    try:
        return pickle.loads(payload)
    except Exception as exc:
        raise SnapshotError(
            f"snapshot verified but cannot be unpickled ({type(exc).__name__}: {exc}); "
            f"written by worker {header.get('worker')} / river {header.get('river')}, "
            f"running worker {worker.__version__} / river {river.__version__}"
        ) from exc


def verify(data: bytes, secret: bytes | str | Sequence[bytes | str]) -> None:
    """Check a snapshot as :func:`load` does, without unpickling it: whether this worker
    could restore it, asked before anything depends on the answer."""
    _verified(data, secret)


def _verified(data: bytes, secret: bytes | str | Sequence[bytes | str]) -> tuple[dict, bytes]:
    """The header and payload of an intact snapshot signed with ``secret`` (or one of them)."""
    keys = [secret_key(s) for s in (secret if isinstance(secret, list | tuple) else [secret])]
    if not keys:
        raise ConfigError("no snapshot secret to verify with")
    signature, header_line, header, payload = _parse(data)
    fmt = header.get("format")
    if fmt != FORMAT_VERSION:
        raise SnapshotError(
            f"unsupported snapshot format {fmt!r} (this worker reads format {FORMAT_VERSION})"
        )
    expected_len = header.get("payload_len")
    if not isinstance(expected_len, int) or isinstance(expected_len, bool) or expected_len < 0:
        raise SnapshotError("corrupt snapshot header: bad payload_len")
    if len(payload) < expected_len:
        raise SnapshotError(
            f"truncated snapshot: {len(payload)} of {expected_len} payload bytes"
        )
    if len(payload) > expected_len:
        raise SnapshotError(
            f"corrupt snapshot: {len(payload) - expected_len} bytes after the payload"
        )
    if not any(hmac.compare_digest(signature, _sign(key, header_line, payload)) for key in keys):
        raise SignatureError("signature mismatch: tampered, or signed with another secret")
    # Signed by us: from here on the bytes are trusted.
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise SnapshotError("corrupt snapshot: payload sha256 does not match its header")
    return header, payload
