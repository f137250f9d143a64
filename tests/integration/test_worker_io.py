"""The worker's edges against a real broker: bad input, operator commands, delayed labels,
start-up errors, and restarts (ARCHITECTURE.md §2, §4).

Every test runs real `python -m worker` processes on its own topic prefix and waits on
conditions (what the worker wrote to Kafka, what it answers on the control topic), never
on sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from tests.integration.harness import (
    SECRET,
    WorkerProcess,
    create_all_topics,
    event,
    json_values,
    predicted_ids,
    produce,
    read_all,
    wait_until,
)
from worker.io.codec import sign_command
from worker.io.topics import CONNECT_TIMEOUT_S, topic_specs
from worker.settings import TopicNames

OTHER_SPEC = "preprocessing.StandardScaler | linear_model.LogisticRegression(l2=0.01)"


# ----------------------------------------------------------------------------- helpers


def control(
    bootstrap: str, prefix: str, command: str, *args: str, secret: str | None = SECRET, wait_s: float = 60
) -> tuple[int, list[dict[str, Any]], str]:
    """`worker control COMMAND …`: (exit code, the JSON lines it printed, stderr)."""
    argv = [
        sys.executable,
        "-m",
        "worker",
        "control",
        command,
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        "--wait",
        str(wait_s),
        *args,
    ]
    if secret is not None:
        argv += ["--secret", secret]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=wait_s + 30)
    lines = [orjson.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, lines, out.stderr


def status(bootstrap: str, prefix: str, **kwargs: Any) -> dict[str, Any]:
    """The worker's `status_report` detail (its engine's status())."""
    code, lines, stderr = control(bootstrap, prefix, "status", **kwargs)
    assert code == 0, (lines, stderr)
    reports = [line for line in lines if line["type"] == "status_report"]
    assert len(reports) == 1, lines
    assert lines[-1]["type"] == "command_applied", lines
    return reports[0]["detail"]


def types(lines: list[dict[str, Any]]) -> list[str]:
    return [line["type"] for line in lines]


def produce_tracked(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Produce in order; the (partition, offset) each record was written at."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    positions: dict[int, tuple[int, int]] = {}

    def delivered(i: int):
        def on_delivery(err, msg) -> None:
            assert err is None, err
            positions[i] = (msg.partition(), msg.offset())

        return on_delivery

    for i, (key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, on_delivery=delivered(i))
    assert producer.flush(60) == 0
    assert len(positions) == len(records)
    return [positions[i] for i in range(len(records))]


def wait_predicted(bootstrap: str, prefix: str, count: int, timeout_s: float = 60) -> list[str]:
    return wait_until(
        lambda: (ids := predicted_ids(bootstrap, prefix)) and len(ids) >= count and ids,
        timeout_s,
        f"{count} predictions on {prefix}predictions",
    )


@contextmanager
def running(bootstrap: str, prefix: str, log_path: Path, *args: str) -> Iterator[WorkerProcess]:
    """A ready worker (its own log file); stopped at the end, and it must stop cleanly."""
    assert not log_path.exists(), "one log file per worker process: wait_ready reads it"
    worker = WorkerProcess(bootstrap, prefix, log_path, *args)
    try:
        worker.wait_ready()
        yield worker
    except BaseException:
        stop(worker)
        raise
    code = stop(worker)
    assert code == 0, f"the worker did not stop cleanly ({code}):\n{worker.log()[-3000:]}"


def stop(worker: WorkerProcess) -> int:
    """SIGTERM and wait; a worker that does not stop in time is killed (and that fails)."""
    try:
        return worker.stop(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(
            f"the worker did not stop within 30s of SIGTERM:\n{worker.log()[-3000:]}"
        ) from None


def header_map(msg) -> dict[str, bytes]:
    return dict(msg.headers() or [])


# ------------------------------------------------------------------ 4. malformed input


def bad_messages() -> list[tuple[str, bytes, str]]:
    """(name, raw bytes, expected part of the dlq.error header)."""
    return [
        ("not json", b"this is not JSON {", "not JSON"),
        ("json array", b'[{"id": "a", "features": {}}]', "must be a JSON object, got array"),
        ("missing id", b'{"features": {"a": 1.0}, "label": true}', "missing id"),
        ("features not an object", b'{"id": "f", "features": [1, 2]}', "features must be an object"),
        ("NaN", b'{"id":"n","features":{"a":NaN}}', "not finite"),
        ("huge string", orjson.dumps({"id": "h", "features": {"s": "x" * 5000}}), "longer than 4096"),
        (
            "10000 features",
            orjson.dumps({"id": "w", "features": {f"f{i}": i for i in range(10_000)}}),
            "too many features",
        ),
        ("label object", b'{"id": "l", "features": {"a": 1.0}, "label": {"x": 1}}', "label must be"),
        ("empty", b"", "empty message"),
        ("invalid utf-8", b'{"id": "\xff\xfe", "features": {"a": 1.0}}', "invalid UTF-8"),
    ]


def test_malformed_events_go_to_the_dlq_and_the_worker_goes_on(bootstrap, unique, tmp_path):
    prefix = unique("dlq") + "."
    create_all_topics(bootstrap, prefix, 3)
    began = time.monotonic()
    with running(bootstrap, prefix, tmp_path / "worker.log", "--status-interval-s", "0.5") as worker:
        bad = bad_messages()
        records: list[tuple[bytes | None, bytes]] = []
        valid_ids: list[str] = []
        bad_index: dict[bytes, int] = {}  # key → index in records
        for i in range(30):
            records.append(event(i))
            valid_ids.append(f"e{i}")
            if i % 3 == 1:  # a bad one after every third valid one
                name, raw, _reason = bad[i // 3]
                key = f"bad-{i // 3}".encode()
                bad_index[key] = len(records)
                records.append((key, raw))
        assert len(bad_index) == len(bad)
        positions = produce_tracked(bootstrap, prefix + "events", records)

        dlq = wait_until(
            lambda: (m := read_all(bootstrap, prefix + "events.dlq")) and len(m) >= len(bad) and m,
            60,
            "10 dead letters",
        )
        wait_predicted(bootstrap, prefix, len(valid_ids))
        assert len(dlq) == len(bad), [header_map(m).get("dlq.error") for m in dlq]

        originals = {(m.partition(), m.offset()): m for m in read_all(bootstrap, prefix + "events")}
        by_key = {m.key(): m for m in dlq}
        assert set(by_key) == set(bad_index)
        for n, (name, raw, reason) in enumerate(bad):
            key = f"bad-{n}".encode()
            letter = by_key[key]
            headers = header_map(letter)
            assert letter.value() == raw, name  # the original bytes, b"" stays b""
            assert reason in headers["dlq.error"].decode(), (name, headers["dlq.error"])
            assert headers["dlq.original.topic"] == (prefix + "events").encode(), name
            partition = int(headers["dlq.original.partition"])
            offset = int(headers["dlq.original.offset"])
            assert (partition, offset) == positions[bad_index[key]], name
            original = originals[partition, offset]
            assert original.key() == key and original.value() == raw, name

        # still alive and serving: a later valid event is predicted too
        assert worker.proc.poll() is None, worker.log()[-3000:]
        produce(bootstrap, prefix + "events", [event(1000)])
        ids = wait_until(
            lambda: "e1000" in (got := predicted_ids(bootstrap, prefix)) and got,
            60,
            "the prediction of a later valid event",
        )
        counts = Counter(ids)
        assert set(counts) == {*valid_ids, "e1000"}
        assert all(c == 1 for c in counts.values()), {i: c for i, c in counts.items() if c != 1}
        assert worker.proc.poll() is None
        assert '"level": "warning"' in worker.log() and "dead-lettered" in worker.log()
        # every one is counted in the status, and the periodic status reports say so too
        counts = status(bootstrap, prefix)["counts"]
        assert (counts["undecodable"], counts["bad"], counts["events"]) == (len(bad), 0, len(valid_ids) + 1)
        periodic = wait_until(
            lambda: [r for r in json_values(read_all(bootstrap, prefix + "control"))
                     if r["type"] == "status_report" and "command_id" not in r
                     and r["detail"]["counts"]["undecodable"] == len(bad)],
            60, "a periodic status report that counts every dead letter",
        )
        assert periodic[-1]["detail"]["counts"]["events"] == len(valid_ids) + 1
        everyone = [r for r in json_values(read_all(bootstrap, prefix + "control"))
                    if r["type"] == "status_report" and "command_id" not in r]
        # one as it starts, then one per 0.5 s (it wrote one per loop once: about a hundred a second)
        assert len(everyone) <= (time.monotonic() - began) / 0.5 + 2, len(everyone)


def set_max_message_bytes(bootstrap: str, topic: str, value: int) -> None:
    """Set ``topic``'s max.message.bytes, and return once the broker applies it: the
    controller acknowledges the change before the broker has taken it from the metadata
    log, and a message written meanwhile is still held to the old limit."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)

    def applied() -> bool:
        described = ConfigResource(ConfigResource.Type.TOPIC, topic)
        config = admin.describe_configs([described])[described].result(timeout=30)
        return config["max.message.bytes"].value == str(value)

    wait_until(applied, 30, f"the broker to apply max.message.bytes={value} on {topic}")


def test_outputs_never_exceed_their_topics_message_size(bootstrap, unique, tmp_path):
    """A message the broker refuses fails the whole transaction, and every retry the same
    way: the worker must not write one. A bad event near the DLQ's size limit gets a
    truncated dead letter; an event whose prediction would be too big (a huge key) is
    dead-lettered instead of predicted."""
    prefix = unique("size") + "."
    create_all_topics(bootstrap, prefix, 1)
    set_max_message_bytes(bootstrap, prefix + "events.dlq", 20_000)
    set_max_message_bytes(bootstrap, prefix + "predictions", 20_000)
    with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
        big_bad = (b"k" * 15_000, b"{not JSON" + b"x" * 30_000)
        big_key = (b"u" * 25_000, event(20)[1])
        records = [event(i) for i in range(20)] + [big_bad, big_key] + [event(i) for i in range(21, 40)]
        positions = produce_tracked(bootstrap, prefix + "events", records)
        wait_predicted(bootstrap, prefix, 39)
        dlq = wait_until(lambda: len(m := read_all(bootstrap, prefix + "events.dlq")) >= 2 and m, 60,
                         "two dead letters")
        assert Counter(predicted_ids(bootstrap, prefix)) == Counter(f"e{i}" for i in range(40) if i != 20)
        first, second = (header_map(m) for m in dlq)
        assert first["dlq.truncated"] == b"key 15000 bytes, value 30009 bytes"
        key, value = dlq[0].key(), dlq[0].value()
        assert (key, value) == (big_bad[0][:len(key)], big_bad[1][:len(value)])  # their beginnings
        assert len(key) + len(value) < 20_000
        assert int(first["dlq.original.offset"]) == positions[20][1]
        assert b"larger than" in second["dlq.error"], second
        assert int(second["dlq.original.offset"]) == positions[21][1]
        assert "transaction aborted" not in worker.log()


def test_snapshots_and_models_are_chunked_to_fit_their_topics(bootstrap, unique, tmp_path):
    """`models` and `worker-state` made by hand with a small max.message.bytes: the models
    and the engine's snapshots (each over 40 KB here: 2,000 distinct feature names) are
    cut into chunks that fit, and a restart restores from them."""
    prefix = unique("chunks") + "."
    create_all_topics(bootstrap, prefix, 1)
    limit = 20_000
    for topic in ("models", "worker-state"):
        set_max_message_bytes(bootstrap, prefix + topic, limit)
    wide = [event(i, **{f"f{i}_{j}": float(j) for j in range(20)}) for i in range(100)]
    with running(bootstrap, prefix, tmp_path / "first.log", "--warmup-labels", "50") as first:
        produce(bootstrap, prefix + "events", wide)
        wait_predicted(bootstrap, prefix, 100)
    assert "transaction aborted" not in first.log()
    for topic, chunk_key in (("models", b"v1/2"), ("worker-state", b"chunk:2")):
        messages = read_all(bootstrap, prefix + topic)
        assert chunk_key in {m.key() for m in messages}, f"{topic}: a model or snapshot of 3+ chunks"
        assert max(len(m.key()) + len(m.value() or b"") for m in messages) < limit
    with running(bootstrap, prefix, tmp_path / "second.log") as second:
        assert "restored engine: champion v1, challenger v2, 100 events seen" in second.log()


def delete_under_a_worker(bootstrap: str, prefix: str, log_path: Path, topic: str,
                          then: Callable[[], object] = lambda: None) -> tuple[int, str]:
    """A worker serves 20 events; ``topic`` is deleted, ``then()`` runs; the worker's exit
    code and log once it stopped by itself."""
    worker = WorkerProcess(bootstrap, prefix, log_path)
    try:
        worker.wait_ready()
        produce(bootstrap, prefix + "events", [event(i) for i in range(20)])
        wait_predicted(bootstrap, prefix, 20)
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.delete_topics([prefix + topic])[prefix + topic].result(timeout=30)
        then()
        code = wait_until(lambda: worker.proc.poll(), 90, "the worker to stop")
    finally:
        stop(worker)
    return code, worker.log()


def test_an_output_topic_deleted_while_running_stops_the_worker_with_exit_2_and_loses_nothing(
        bootstrap, unique, tmp_path, create_topic):
    """`predictions` deleted under a running worker: it stops with exit 2 and a line that
    names the topic, rather than wait in vain (its commit would wait, or its recovery
    fail). Once the topic exists again, a restarted worker predicts every event sent
    meanwhile, once."""
    prefix = unique("deleted") + "."
    create_all_topics(bootstrap, prefix, 1)
    def send_more() -> None:
        produce(bootstrap, prefix + "events", [event(i) for i in range(20, 40)])

    code, log = delete_under_a_worker(bootstrap, prefix, tmp_path / "worker.log", "predictions", send_more)
    assert code == 2, log[-2000:]
    assert f"{prefix}predictions" in log and "(deleted while running?" in log
    create_topic(prefix + "predictions")
    with running(bootstrap, prefix, tmp_path / "again.log"):
        ids = wait_predicted(bootstrap, prefix, 20)
        assert Counter(ids) == Counter(f"e{i}" for i in range(20, 40))


def test_the_events_topic_deleted_while_running_stops_the_worker_with_exit_2(bootstrap, unique, tmp_path):
    prefix = unique("deleted-in") + "."
    create_all_topics(bootstrap, prefix, 1)
    code, log = delete_under_a_worker(bootstrap, prefix, tmp_path / "worker.log", "events")
    assert code == 2, log[-2000:]
    assert f"missing topics {prefix}events (deleted while running?)" in log


def test_a_message_the_broker_refuses_aborts_the_transaction_and_the_worker_goes_on(
        bootstrap, unique, tmp_path):
    """The champion's model refused by `models` (its size limit set below the model's
    size): each transaction that carries it fails; once the limit is raised the worker
    goes on, nothing lost, nothing duplicated."""
    prefix = unique("refused") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log", "--warmup-labels", "50") as worker:
        # lowered after the start, when the worker has sized its model chunks (1 MB)
        set_max_message_bytes(bootstrap, prefix + "models", 1000)  # a model is ~1.4 KB
        produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
        wait_until(lambda: "transaction aborted" in worker.log(), 60, "a refused transaction")
        before = set(predicted_ids(bootstrap, prefix))  # none from the failing transactions
        assert before <= {f"e{i}" for i in range(49)}, "e49 ends the warm-up: v1 is published with it"
        set_max_message_bytes(bootstrap, prefix + "models", 8 * 1024 * 1024)
        ids = wait_predicted(bootstrap, prefix, 100, 60)
        assert Counter(ids) == Counter(f"e{i}" for i in range(100))
        assert any(m.key() == b"v1" for m in read_all(bootstrap, prefix + "models"))
        assert worker.proc.poll() is None


# ------------------------------------------------------------ 5. operator commands


def test_operator_promote_then_rollback_and_command_checks(bootstrap, unique, tmp_path):
    prefix = unique("ops") + "."
    create_all_topics(bootstrap, prefix, 2)
    with running(
        bootstrap, prefix, tmp_path / "worker.log", "--policy", "manual", "--require-signed-commands"
    ) as worker:
        produce(bootstrap, prefix + "events", [event(i) for i in range(600)])
        wait_until(
            lambda: status(bootstrap, prefix)["challenger"] is not None, 60, "a challenger after the warm-up"
        )
        before = status(bootstrap, prefix)
        assert before["champion"] == 1 and before["challenger"] == 2, before
        assert before["policy"] == "manual"
        assert before["counts"]["labelled"] >= 500

        # promote: promoted … command_applied, all answering this command's id
        code, lines, stderr = control(
            bootstrap, prefix, "promote", "--expected-champion", "1", "--reason", "integration test"
        )
        assert code == 0, (lines, stderr)
        command_id = lines[-1]["command_id"]
        assert all(line["command_id"] == command_id for line in lines)
        kinds = types(lines)
        assert "promoted" in kinds and kinds[-1] == "command_applied", kinds
        assert kinds.index("promoted") < kinds.index("command_applied")
        promoted = lines[kinds.index("promoted")]
        assert promoted["detail"]["from_version"] == 1 and promoted["detail"]["to_version"] == 2
        assert promoted["champion"] == 2
        assert status(bootstrap, prefix)["champion"] == 2

        # rollback: back to the previous champion
        code, lines, stderr = control(bootstrap, prefix, "rollback")
        assert code == 0, (lines, stderr)
        command_id = lines[-1]["command_id"]
        assert all(line["command_id"] == command_id for line in lines)
        kinds = types(lines)
        assert "rolled_back" in kinds and kinds[-1] == "command_applied", kinds
        assert kinds.index("rolled_back") < kinds.index("command_applied")
        rolled = lines[kinds.index("rolled_back")]
        assert rolled["detail"]["from_version"] == 2 and rolled["detail"]["to_version"] == 1
        after = status(bootstrap, prefix)
        assert after["champion"] == 1, after

        # a stale expected champion is rejected
        code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", "2")
        assert code == 1, (lines, stderr)
        assert types(lines)[-1] == "command_rejected", lines
        assert "stale" in lines[-1]["detail"]["reason"], lines[-1]
        assert status(bootstrap, prefix)["champion"] == 1

        # signatures are required: unsigned and wrongly signed commands are refused and logged
        for secret, word in ((None, "missing signature"), ("wrong-secret", "bad signature")):
            code, lines, stderr = control(bootstrap, prefix, "promote", secret=secret)
            assert code == 1, (secret, lines, stderr)
            assert types(lines) == ["command_rejected"], lines
            reason = lines[-1]["detail"]["reason"]
            assert "signature" in reason and word in reason, reason
            command_id = lines[-1]["command_id"]
            wait_until(
                lambda cid=command_id: any(
                    '"level": "warning"' in line and cid in line and "signature" in line
                    for line in worker.log().splitlines()
                ),
                30,
                "the worker's warning about the command",
            )
        assert status(bootstrap, prefix)["champion"] == 1
        assert worker.proc.poll() is None
        # a report that asks for a fresh status without the secret says it was refused
        out = subprocess.run([sys.executable, "-m", "worker", "report", "--bootstrap", bootstrap,
                              "--topic-prefix", prefix, "--out", str(tmp_path / "report.html")],
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        assert "report: the status command was rejected (missing signature" in out.stderr, out.stderr
        # commands, answers and the worker's own lifecycle events are all valid control messages
        assert read_all(bootstrap, prefix + "events.dlq") == []


def test_with_signed_commands_an_old_signed_command_written_again_is_refused(bootstrap, unique, tmp_path):
    """A signature says who made a command, not when: under --require-signed-commands a
    signed command the broker logs longer than --command-max-age-s after its signed `ts`
    (a copy of an old one, written again) or without a `ts` is refused and logged; the
    bytes of a command the worker applied, written again, are a no-op, not a rejection."""
    prefix = unique("stale") + "."
    create_all_topics(bootstrap, prefix, 1)
    control_topic = prefix + "control"
    with running(bootstrap, prefix, tmp_path / "worker.log", "--policy", "manual",
                 "--require-signed-commands", "--command-max-age-s", "120") as worker:
        code, lines, stderr = control(bootstrap, prefix, "pause")
        assert code == 0 and types(lines)[-1] == "command_applied", (lines, stderr)
        pause_id = lines[-1]["command_id"]
        pause_bytes = next(m.value() for m in read_all(bootstrap, control_topic)
                           if orjson.loads(m.value()).get("type") == "pause_learning")

        def signed(**fields: Any) -> bytes:
            fields["signature"] = sign_command(fields, SECRET)
            return orjson.dumps(fields)

        an_hour_ago = time.time() - 3600
        produce(bootstrap, control_topic, [
            (None, pause_bytes),  # the applied pause again: already applied, no answer
            (None, signed(type="resume_learning", command_id="old-resume", issued_by="eve", ts=an_hour_ago)),
            (None, signed(type="resume_learning", command_id="undated-resume", issued_by="eve")),
        ])

        def answers() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for message in json_values(read_all(bootstrap, control_topic)):
                if message.get("type") in ("command_applied", "command_rejected"):
                    out.setdefault(message["command_id"], []).append(message)
            return out

        wait_until(lambda: {"old-resume", "undated-resume"} <= answers().keys(), 60,
                   "the answers to the two stale commands")
        got = answers()
        assert [a["type"] for a in got[pause_id]] == ["command_applied"], got[pause_id]
        old = got["old-resume"]
        assert [a["type"] for a in old] == ["command_rejected"], old
        assert old[0]["detail"]["reason"].startswith("stale: signed 36"), old  # ~3600 s before
        assert "before the broker logged it (at most 120 s)" in old[0]["detail"]["reason"], old
        undated = got["undated-resume"]
        assert [a["type"] for a in undated] == ["command_rejected"], undated
        assert 'needs a "ts"' in undated[0]["detail"]["reason"], undated
        assert status(bootstrap, prefix)["learning"] is False  # still paused
        wait_until(lambda: any('"level": "warning"' in line and "old-resume" in line and "stale" in line
                               for line in worker.log().splitlines()), 30, "the worker's warning")


def test_an_invalid_raw_command_is_answered_rejected_and_dead_lettered(bootstrap, unique, tmp_path):
    """Any Kafka client may write commands: one that `worker control` would have refused
    (a split of 150 %) still gets its answer, so its sender never waits in vain, and goes
    to the dead-letter topic like any bad input. An unknown type is only dead-lettered: it
    may be a lifecycle event of a newer release, whose command was answered already."""
    prefix = unique("rawcmd") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log"):
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(prefix + "control", b'{"type": "set_split", "command_id": "raw-1", "percent": 150}',
                         headers=[("trace-id", b"t-1")])
        producer.produce(prefix + "control", b'{"type": "frobnicate", "command_id": "raw-2"}')
        assert producer.flush(30) == 0

        def answers() -> dict[str, dict]:
            return {m["command_id"]: m for m in json_values(read_all(bootstrap, prefix + "control"))
                    if m.get("type") == "command_rejected"}

        wait_until(lambda: len(read_all(bootstrap, prefix + "events.dlq")) == 2, 60, "two dead letters")
        wait_until(lambda: "raw-1" in answers(), 30, "the answer to raw-1")
        first, second = read_all(bootstrap, prefix + "events.dlq")
        assert first.headers()[0] == ("trace-id", b"t-1"), "the producer's headers are kept, first"
        assert header_map(first)["dlq.error"].startswith(b"percent must be")
        assert header_map(second)["dlq.error"] == b"unknown control message type 'frobnicate'"
        assert set(answers()) == {"raw-1"}
        assert "percent must be a number between 0 and 100" in answers()["raw-1"]["detail"]["reason"]
        assert status(bootstrap, prefix)["split_percent"] == 0.0


def test_a_decision_of_an_earlier_run_read_from_control_is_skipped(bootstrap, unique, tmp_path):
    """The worker's own decisions on control are records: an at-least-once worker restored
    from its last snapshot reads again those it took after it, about models that under
    the same numbers are not the ones it has now (it promoted a challenger one event old).
    One this engine did not take is skipped, unanswered; an operator's command is not."""
    prefix = unique("olddecision") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log", "--policy", "manual", "--warmup-labels", "50"):
        produce(bootstrap, prefix + "events", [event(i) for i in range(60)])
        wait_until(lambda: status(bootstrap, prefix)["challenger"] == 2, 60, "a challenger after the warm-up")
        earlier = {"type": "promote", "command_id": "auto-promote-v1-to-v2-at-9000", "issued_by": "worker",
                   "reason": "an earlier run's", "expected_champion": 1}
        produce(bootstrap, prefix + "control", [(None, orjson.dumps(earlier))])
        code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", "1")
        assert code == 0 and types(lines)[-1] == "command_applied", (lines, stderr)  # read after it
        assert status(bootstrap, prefix)["champion"] == 2
        answered = {m.get("command_id") for m in json_values(read_all(bootstrap, prefix + "control"))
                    if m.get("type") in ("command_applied", "command_rejected")}
        assert "auto-promote-v1-to-v2-at-9000" not in answered


def test_a_command_sent_while_the_worker_is_down_is_applied_when_it_comes_back(bootstrap, unique, tmp_path):
    """It commits where on control it stands (it commits the position it was assigned at
    too, should it stop before it read a message there: its own status report at start)."""
    prefix = unique("down") + "."
    create_all_topics(bootstrap, prefix, 1)
    quiet = ("--status-interval-s", "0", "--warmup-labels", "1000")  # only its status report at start
    with running(bootstrap, prefix, tmp_path / "first.log", *quiet):
        produce(bootstrap, prefix + "events", [event(i) for i in range(20)])
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 20, 60, "20 predictions")
    assert [m["type"] for m in json_values(read_all(bootstrap, prefix + "control"))] == ["status_report"]

    code, lines, stderr = control(bootstrap, prefix, "pause", wait_s=0.5)
    assert code == 1 and "no answer" in lines[-1]["error"], (lines, stderr)
    command_id = lines[-1]["command_id"]
    assert f"--command-id {command_id}" in lines[-1]["note"]
    code, lines, stderr = control(bootstrap, prefix, "pause", "--command-id", command_id, wait_s=0.5)
    assert code == 1 and lines[-1]["command_id"] == command_id, (lines, stderr)  # sent again: still down

    def answers() -> list[dict]:
        return [m for m in json_values(read_all(bootstrap, prefix + "control"))
                if m.get("command_id") == command_id and "detail" in m]

    with running(bootstrap, prefix, tmp_path / "second.log", *quiet):
        wait_until(lambda: answers(), 60, "the answer to the command sent while the worker was down")
        code, lines, stderr = control(bootstrap, prefix, "pause", "--command-id", command_id)
        assert code == 0 and lines[-1]["type"] == "command_applied", (lines, stderr)  # the earlier answer
        # signatures are not required here, but one made with another secret is refused
        code, lines, stderr = control(bootstrap, prefix, "resume", secret="not the worker's")
        assert code == 1 and lines[-1]["detail"]["reason"] == "bad signature: another secret made it", lines
        after = status(bootstrap, prefix)
        assert after["learning"] is False and after["counts"]["events"] == 20, after
    assert [m["type"] for m in answers()] == ["command_applied"], "sent twice while down, applied once"
    log = json_values(read_all(bootstrap, prefix + "control"))
    # the two sends and the answer: the third call found the answer and sent nothing
    assert sum(m.get("command_id") == command_id for m in log) == 3


# ------------------------------------------------------------------ 6. delayed labels


def test_delayed_labels_before_and_after_their_events_are_joined(bootstrap, unique, tmp_path):
    prefix = unique("lab") + "."
    create_all_topics(bootstrap, prefix, 2)
    with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
        n, early = 200, 30

        def label(i: int) -> tuple[bytes, bytes]:
            a, b = (i * 37 % 101) / 101, (i * 53 % 97) / 97
            return f"user-{i % 50}".encode(), orjson.dumps({"id": f"e{i}", "label": a > b})

        # labels that come before their events wait in the engine's early buffer
        produce(bootstrap, prefix + "labels", [label(i) for i in range(early)])
        wait_until(
            lambda: status(bootstrap, prefix)["pending"]["labels"] == early,
            60,
            "the early labels to be pending",
        )
        produce(bootstrap, prefix + "events", [event(i, label=None) for i in range(n)])
        wait_predicted(bootstrap, prefix, n)
        mid = status(bootstrap, prefix)
        assert mid["pending"]["labels"] == 0, mid["pending"]
        assert mid["pending"]["predictions"] == n - early, mid["pending"]
        assert mid["counts"]["labelled"] == early, mid["counts"]

        # the rest come after their events
        produce(bootstrap, prefix + "labels", [label(i) for i in range(early, n)])
        final = wait_until(
            lambda: (s := status(bootstrap, prefix))["counts"]["labelled"] >= n and s,
            60,
            "every label to be learned",
        )
        assert final["counts"]["labelled"] == n, final["counts"]
        assert final["counts"]["events"] == n
        pending = final["pending"]
        assert pending["predictions"] == 0 and pending["labels"] == 0, pending
        assert pending["labels_matched"] == early, pending  # early labels found their event
        assert pending["predictions_matched"] == n - early, pending  # events found their label
        assert final["counts"]["bad"] == 0
        # the champion learned from every label during the warm-up (default 500 > n)
        assert final["models"]["champion"]["learned"] == n
        assert len(read_all(bootstrap, prefix + "events.dlq")) == 0
        assert worker.proc.poll() is None


def test_without_a_labels_topic_the_worker_runs_and_reads_it_once_created(bootstrap, unique, tmp_path):
    """`labels` is optional (ARCHITECTURE.md §2): inline labels only until it exists."""
    prefix = unique("nolab") + "."
    names = TopicNames.from_prefix(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    specs = {s.name: s for s in topic_specs(names, 2)}
    labels = specs.pop(names.labels)
    for future in admin.create_topics([NewTopic(s.name, s.partitions, 1, config=s.config)
                                       for s in specs.values()]).values():
        future.result(timeout=30)
    with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
        assert f"no topic {names.labels}: labels come inline only until it is created" in worker.log()
        produce(bootstrap, names.events, [event(i) for i in range(50)])  # inline labels
        produce(bootstrap, names.events, [event(i, label=None) for i in range(50, 100)])
        wait_predicted(bootstrap, prefix, 100)
        assert status(bootstrap, prefix)["counts"]["labelled"] == 50

        admin.create_topics([NewTopic(labels.name, labels.partitions, 1, config=labels.config)])[
            labels.name].result(timeout=30)
        produce(bootstrap, names.labels, [(f"user-{i % 50}".encode(), orjson.dumps(
            {"id": f"e{i}", "label": i % 2 == 0})) for i in range(50, 100)])
        wait_until(lambda: status(bootstrap, prefix)["counts"]["labelled"] == 100, 60,
                   "the labels topic to be found and its labels joined")
        assert f"new partitions: {names.labels}[0], {names.labels}[1]" in worker.log()
        assert worker.proc.poll() is None


# ----------------------------------------------------------------- 7. start-up errors


#: How long a `worker run` that must refuse to start may take, its own start-up included:
#: the longest wait of a start-up check (an unreachable broker: CONNECT_TIMEOUT_S, 8 s),
#: plus the interpreter and the imports (river, numpy: 1-1.5 s at a load of 4.5 on 2
#: cores, measured; 12 s for a process starved under `pytest -n 4`). A worker that waited
#: on the broker as librdkafka does by default (for ever) would still be caught.
STARTUP_ERROR_S = CONNECT_TIMEOUT_S + 12


def run_briefly(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--secret", SECRET, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, out.stderr, time.monotonic() - started


def the_one_error_line(stderr: str) -> str:
    """The worker's closing error line; no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("worker: ")]
    assert len(errors) == 1, stderr
    assert stderr.rstrip().splitlines()[-1] == errors[0], stderr
    return errors[0]


def test_a_worker_started_with_another_secret_or_group_leaves_the_running_one_alone(bootstrap, unique,
                                                                                    tmp_path):
    """A mistyped --secret (or --group) must not take a deployment down or predict its
    input again: the newcomer refuses before it fences or reads anything (exit 2)."""
    prefix = unique("secret") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
        produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
        wait_predicted(bootstrap, prefix, 100)  # the state on worker-state: a snapshot from its start on
        code, stderr, _ = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix,
                                      "--group", f"{prefix}group", "--secret", "a typo")
        assert code == 2, stderr
        line = the_one_error_line(stderr)
        assert "cannot be restored with this --secret" in line and "nothing was taken over" in line, line
        # another --group on the same prefix would adopt this group's engine yet read every
        # input from offset 0 (learning it twice, predicting it again): refused too
        code, stderr, _ = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix, "--group", "other")
        assert code == 2, stderr
        line = the_one_error_line(stderr)
        assert f"holds the state of group '{prefix}group', not 'other'" in line, line
        assert len(predicted_ids(bootstrap, prefix)) == 100, "nothing predicted again"
        produce(bootstrap, prefix + "events", [event(i) for i in range(100, 200)])
        wait_predicted(bootstrap, prefix, 200)
        assert worker.proc.poll() is None and "fenced" not in worker.log()


def test_a_progress_record_written_by_someone_else_is_not_replayed(bootstrap, unique, tmp_path):
    """Anyone who can write to worker-state could make a recovery replay input of their
    choosing (learning it again): a progress record without this worker's signature after
    its snapshot stops the start (exit 1) instead, with a line that says which."""
    prefix = unique("forged") + "."
    create_all_topics(bootstrap, prefix, 1)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    worker.wait_ready()
    produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
    wait_predicted(bootstrap, prefix, 100)
    worker.kill()
    forged = {"seq": 10**6, "runs": [[prefix + "events", 0, 0, 99]]}
    produce(bootstrap, prefix + "worker-state", [(f"progress:{10**6}".encode(), orjson.dumps(forged))])
    code, stderr, _ = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix,
                                  "--group", f"{prefix}group")
    assert code == 1, stderr[-3000:]
    line = the_one_error_line(stderr)
    assert f"progress record {10**6} is not signed with this worker's secret" in line, line
    assert len(predicted_ids(bootstrap, prefix)) == 100


def test_labels_the_model_cannot_learn_are_served_and_warned_about(bootstrap, unique, tmp_path):
    """String labels for a binary classifier: every event is still served, and the log
    says why the model does not learn (else only a metric would show it)."""
    prefix = unique("strlabel") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
        produce(bootstrap, prefix + "events", [event(i, label="UP" if i % 2 else "DOWN") for i in range(30)])
        wait_predicted(bootstrap, prefix, 30)
        wait_until(lambda: "models could not learn a labelled event" in worker.log(), 30, "the warning")
        line = next(line for line in worker.log().splitlines() if "could not learn" in line)
        assert '"level": "warning"' in line and "v1 could not learn: ValueError" in line, line
        assert status(bootstrap, prefix)["counts"]["learn_errors"] == 30


def test_startup_errors_exit_2_with_one_clear_line(bootstrap, unique, tmp_path):
    # a missing topic
    prefix = unique("miss") + "."
    names = TopicNames.from_prefix(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    specs = [s for s in topic_specs(names, 1) if s.name != names.predictions]
    futures = admin.create_topics([NewTopic(s.name, s.partitions, 1, config=s.config) for s in specs])
    for future in futures.values():
        future.result(timeout=30)
    code, stderr, elapsed = run_briefly(
        "--bootstrap", bootstrap, "--topic-prefix", prefix, "--group", prefix + "group"
    )
    line = the_one_error_line(stderr)
    assert code == 2, stderr
    assert elapsed < STARTUP_ERROR_S, elapsed
    assert "missing topic" in line and names.predictions in line, line
    assert f"(create it with `worker topics create --topic-prefix {prefix}`)" in line, line
    assert names.events + "," not in line and names.control not in line, line  # only the missing one

    # a bad model spec: the line says which spec and what is wrong with it
    for option, spec, problem in (
        ("champion", "lambda x: x", "lambdas are not allowed"),
        ("challenger", "linear_model.NoSuchModel", "NoSuchModel"),
    ):
        code, stderr, elapsed = run_briefly(
            "--bootstrap", bootstrap, "--topic-prefix", prefix, f"--{option}", spec
        )
        line = the_one_error_line(stderr)
        assert code == 2, stderr
        assert elapsed < STARTUP_ERROR_S, elapsed
        assert f"configuration error: {option}: invalid model spec" in line and problem in line, line

    # an unreachable broker
    code, stderr, elapsed = run_briefly("--bootstrap", "127.0.0.1:1", "--topic-prefix", prefix)
    line = the_one_error_line(stderr)
    assert code == 2, stderr
    assert elapsed < STARTUP_ERROR_S, elapsed
    assert "cannot reach Kafka" in line and "127.0.0.1:1" in line, line

    # a scorer: the same checks, and what it cannot do
    for args, problem in (((), "missing topics"),
                          (("--guarantee", "at_least_once"), "--role scorer needs --guarantee exactly_once")):
        code, stderr, elapsed = run_briefly("--bootstrap", bootstrap, "--topic-prefix", unique("none") + ".",
                                            "--role", "scorer", *args)
        line = the_one_error_line(stderr)
        assert code == 2 and elapsed < STARTUP_ERROR_S, (elapsed, stderr)
        assert problem in line, line

    # a transaction timeout above what the broker allows (its default maximum is 15 minutes)
    config = tmp_path / "worker.toml"
    config.write_text("[run]\ntransaction_timeout_ms = 3600000\n")
    complete = unique("timeout") + "."
    create_all_topics(bootstrap, complete, 1)
    for role, setting in (("all", ("--config", str(config))),
                          ("scorer", ("--transaction-timeout-ms", "3600000"))):  # in TOML or as a flag
        code, stderr, elapsed = run_briefly("--bootstrap", bootstrap, "--topic-prefix", complete, *setting,
                                            "--role", role)
        line = the_one_error_line(stderr)
        assert code == 2 and elapsed < STARTUP_ERROR_S, (elapsed, stderr)
        assert "the broker refused the worker's set-up" in line and "transaction" in line, line

    # topics made by hand with a shape that breaks a guarantee
    for broken, config, partitions, problem in (
        ("control", {}, 2, "the control topic must have exactly 1"),
        ("worker_state", {"cleanup.policy": "delete"}, 1, "it must be compacted"),
        ("worker_state", {}, 3, "the worker-state topic must have exactly 1"),  # read from partition 0
        ("models", {}, 2, "the models topic must have exactly 1"),
    ):
        prefix = unique(f"shape-{broken.replace('_', '-')}-{partitions}") + "."
        names = TopicNames.from_prefix(prefix)
        specs = {s.name: s for s in topic_specs(names, 1)}
        name = getattr(names, broken)
        specs[name] = type(specs[name])(name, partitions, {**specs[name].config, **config})
        for future in admin.create_topics([NewTopic(s.name, s.partitions, 1, config=s.config)
                                           for s in specs.values()]).values():
            future.result(timeout=30)
        # a scorer reads control and models too
        for role in ("all", "scorer") if broken in ("control", "models") else ("all",):
            code, stderr, elapsed = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix,
                                                "--role", role)
            line = the_one_error_line(stderr)
            assert code == 2 and elapsed < STARTUP_ERROR_S, (role, elapsed, stderr)
            assert problem in line and name in line, (role, line)

    # the operator's side: `worker control` to a deployment without its control topic
    code, lines, stderr = control(bootstrap, unique("none") + ".", "status", wait_s=5)
    line = the_one_error_line(stderr)
    assert (code, lines) == (2, []), stderr
    assert "missing topic" in line and "control" in line, line


# ------------------------------------------------------------------------ 9. restarts


def test_restart_keeps_models_new_challenger_spec_applies_next_and_fresh_starts_over(
    bootstrap, unique, tmp_path
):
    prefix = unique("rst") + "."
    create_all_topics(bootstrap, prefix, 2)

    with running(bootstrap, prefix, tmp_path / "first.log", "--policy", "manual") as first:
        assert "new engine" in first.log()
        produce(bootstrap, prefix + "events", [event(i) for i in range(600)])
        wait_predicted(bootstrap, prefix, 600)
        code, lines, stderr = control(bootstrap, prefix, "promote")
        assert code == 0, (lines, stderr)
        before = status(bootstrap, prefix)
    assert before["champion"] == 2 and before["challenger"] == 3, before
    assert before["counts"]["events"] == 600
    default_spec = before["models"]["challenger"]["spec"]
    assert default_spec != OTHER_SPEC

    # restart with another challenger spec: the restored models win
    with running(
        bootstrap, prefix, tmp_path / "second.log", "--policy", "manual", "--challenger", OTHER_SPEC
    ) as second:
        assert "restored engine" in second.log()
        restored = status(bootstrap, prefix)
        assert restored["champion"] == before["champion"], restored
        assert restored["challenger"] == before["challenger"], restored
        assert restored["counts"] == before["counts"]
        assert restored["models"]["challenger"]["spec"] == default_spec
        assert restored["models"]["champion"]["learned"] == before["models"]["champion"]["learned"]
        assert restored["models"]["challenger"]["learned"] == before["models"]["challenger"]["learned"]

        produce(bootstrap, prefix + "events", [event(i) for i in range(600, 700)])
        wait_predicted(bootstrap, prefix, 700)
        going_on = status(bootstrap, prefix)
        assert going_on["counts"]["events"] == 700, going_on["counts"]  # continues, not from 0
        assert going_on["champion"] == before["champion"]
        assert going_on["models"]["challenger"]["learned"] == before["models"]["challenger"]["learned"] + 100

        # the next challenger is built from the new spec
        code, lines, stderr = control(bootstrap, prefix, "reset")
        assert code == 0, (lines, stderr)
        assert "challenger_created" in types(lines), lines
        after_reset = status(bootstrap, prefix)
        assert after_reset["champion"] == before["champion"]
        assert after_reset["challenger"] not in (None, before["challenger"]), after_reset
        assert after_reset["models"]["challenger"]["spec"] == OTHER_SPEC, after_reset["models"]
        assert "challenger spec changed" in second.log()

    # --fresh: version 1 again, counting only the events since the fresh start; a command
    # sent to the old engine while the worker was down is not for the new one
    code, lines, stderr = control(bootstrap, prefix, "pause", wait_s=0.5)
    assert code == 1 and "no answer" in lines[-1]["error"], (lines, stderr)
    with running(bootstrap, prefix, tmp_path / "third.log", "--policy", "manual", "--fresh") as third:
        assert "stored state ignored" in third.log()
        produce(bootstrap, prefix + "events", [event(i) for i in range(700, 750)])
        wait_predicted(bootstrap, prefix, 750)
        fresh = status(bootstrap, prefix)
        assert fresh["champion"] == 1 and fresh["challenger"] is None, fresh
        assert fresh["counts"]["events"] == 50, fresh["counts"]
        assert fresh["counts"]["labelled"] == 50
        assert fresh["models"]["champion"]["learned"] == 50 and fresh["learning"] is True
        ids = Counter(predicted_ids(bootstrap, prefix))
        assert len(ids) == 750 and set(ids.values()) == {1}
    assert read_all(bootstrap, prefix + "events.dlq") == []

    # a lost state (worker-state deleted, made again) also starts a new engine: the group's
    # offsets remain, but a command sent to the engine that is gone is not for this one
    code, lines, stderr = control(bootstrap, prefix, "pause", wait_s=0.5)
    assert code == 1 and "no answer" in lines[-1]["error"], (lines, stderr)
    state_topic = TopicNames.from_prefix(prefix).worker_state
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([state_topic])[state_topic].result(timeout=30)
    spec = next(s for s in topic_specs(TopicNames.from_prefix(prefix), 1) if s.name == state_topic)

    def made_again() -> bool:
        try:
            admin.create_topics([NewTopic(state_topic, 1, 1, config=spec.config)])[state_topic].result(30)
            return True
        except KafkaException:  # still being deleted
            return False
    wait_until(made_again, 60, f"{state_topic} made again")
    with running(bootstrap, prefix, tmp_path / "fourth.log", "--policy", "manual") as fourth:
        assert "new engine" in fourth.log()
        assert status(bootstrap, prefix)["learning"] is True, "the old engine's pause is not applied"


def test_an_open_transaction_on_an_output_topic_is_reported_at_start(bootstrap, unique, tmp_path):
    """Only the worker writes predictions; a transaction still open there when it starts
    is a hanging one (markers lost, README "Brokers for exactly once"): it says so."""
    prefix = unique("hanging") + "."
    create_all_topics(bootstrap, prefix, 2)
    other = Producer({"bootstrap.servers": bootstrap, "transactional.id": prefix + "someone-else"})
    other.init_transactions(30)
    other.begin_transaction()
    other.produce(prefix + "predictions", value=b"{}", partition=1)
    assert other.flush(30) == 0
    try:
        with running(bootstrap, prefix, tmp_path / "worker.log") as worker:
            warnings = [line for line in worker.log().splitlines()
                        if '"level": "warning"' in line and "open transaction" in line]
            assert len(warnings) == 1 and f"{prefix}predictions[1]" in warnings[0], warnings
            assert "held at offset 0 of 1" in warnings[0], warnings
    finally:
        other.abort_transaction(30)
    with running(bootstrap, prefix, tmp_path / "restarted.log") as worker:
        assert "open transaction" not in worker.log(), "nothing open once it was aborted"
