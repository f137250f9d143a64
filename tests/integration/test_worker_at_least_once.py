"""`--guarantee at_least_once`: no transactions, a local snapshot, then the offsets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.harness import (
    SECRET,
    WorkerProcess,
    committed_offsets,
    create_all_topics,
    event,
    predicted_ids,
    produce,
    wait_until,
)
from tests.integration.test_worker_exactly_once import drifting_event, status_answer
from tests.integration.test_worker_io import run_briefly, running, the_one_error_line
from worker.core import state

pytestmark = pytest.mark.slow


def test_kill_9_loses_nothing_and_the_state_matches_the_offsets(bootstrap, unique, tmp_path):
    prefix = unique("alo") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    args = ("--guarantee", "at_least_once", "--state-dir", str(tmp_path / "state"))
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    worker.wait_ready()
    produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(12_000)))

    def ids() -> Counter:
        return Counter(predicted_ids(bootstrap, prefix))

    wait_until(lambda: sum(ids().values()) > 5000, 60, "predictions before the kill")
    worker.kill()
    assert (tmp_path / "state" / f"{prefix}group.snapshot").exists(), "a snapshot was saved"
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    try:
        worker.wait_ready()
        assert '"message": "restored engine' in worker.log()
        seen = wait_until(lambda: len(c := ids()) == 12_000 and c, 120, "every event predicted")
        assert set(seen) == {f"e{i}" for i in range(12_000)}  # at least once: duplicates allowed, no loss

        def processed_all() -> dict | None:
            """The status once the engine has processed every event (a partition it replays
            from the snapshot may still lag when every id has been predicted once)."""
            answer = status_answer(bootstrap, prefix)
            done = sum(o + 1 for tp, o in answer["offsets"].items() if tp.startswith(f"{prefix}events:"))
            return answer["detail"] if done == 12_000 else None
        # the restored engine resumed from its own offsets: it learned each event once
        assert wait_until(processed_all, 60, "every event processed")["counts"]["events"] == 12_000
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    # restarted with another secret: the snapshot file is refused, as a configuration error
    out = subprocess.run([sys.executable, "-m", "worker", "run", "--bootstrap", bootstrap,
                          "--topic-prefix", prefix, "--group", f"{prefix}group", "--secret", "a typo", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "cannot be restored with this --secret (signature mismatch" in out.stderr.splitlines()[-1]


def test_a_snapshot_that_cannot_be_written_is_retried_and_serving_goes_on(bootstrap, unique, tmp_path):
    """at_least_once: a state folder that cannot take a snapshot (a full disk, here a file
    in its place) stops nothing — no offset is committed without a snapshot, and the next
    one succeeds once the folder is back. One that is unusable at start is exit 2."""
    prefix = unique("alo-disk") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    out = subprocess.run([sys.executable, "-m", "worker", "run", "--bootstrap", bootstrap, "--topic-prefix",
                          prefix, "--secret", SECRET, "--guarantee", "at_least_once",
                          "--state-dir", str(blocked / "state")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"state_dir {blocked / 'state'} cannot hold the snapshot" in out.stderr

    folder = tmp_path / "state"
    args = ("--guarantee", "at_least_once", "--state-dir", str(folder), "--snapshot-interval-s", "0.5")
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    try:
        worker.wait_ready()
        produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(100)))
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) >= 100, 60, "100 predictions")
        shutil.rmtree(folder)
        folder.write_text("the disk is full")
        produce(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(100, 200)))
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) >= 200, 60, "serving goes on")
        wait_until(lambda: "cannot write the snapshot" in worker.log(), 30, "the failed snapshot logged")
        [committed] = committed_offsets(bootstrap, prefix + "group", prefix + "events", 1)
        assert committed <= 100, "no offset committed past the last snapshot"
        folder.unlink()
        wait_until(lambda: committed_offsets(bootstrap, prefix + "group", prefix + "events", 1) == [200], 30,
                   "the next snapshot, then the offsets")
        assert worker.proc.poll() is None
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]



def test_input_handled_before_the_worker_went_idle_is_snapshotted_one_interval_later(
        bootstrap, unique, tmp_path):
    """At least once, a snapshot was only due when input came in the commit interval: the
    last input before a quiet spell stayed out of the snapshot until more came, and a
    crash then served it again. Now it is saved one snapshot interval later: a kill -9
    after that serves nothing twice."""
    prefix = unique("alo-idle") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    folder = tmp_path / "state"
    args = ("--guarantee", "at_least_once", "--state-dir", str(folder), "--snapshot-interval-s", "3")
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    worker.wait_ready()
    produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 100, 60, "the first burst served")
    produce(bootstrap, prefix + "events", [event(i) for i in range(100, 200)])  # then nothing more

    def saved_events() -> int:
        path = folder / f"{prefix}group.snapshot"
        if not path.exists():
            return 0
        offsets = state.load(path.read_bytes(), (SECRET.encode(),))["offsets"]
        return sum(o for (topic, _), o in offsets.items() if topic == prefix + "events")

    wait_until(lambda: saved_events() == 200, 30, "a snapshot of both bursts while idle")
    worker.kill()
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", *args)
    try:
        worker.wait_ready()
        produce(bootstrap, prefix + "events", [event(200)])
        served = wait_until(lambda: len(c := Counter(predicted_ids(bootstrap, prefix))) == 201 and c, 60,
                            "the event after the restart served")
        assert max(served.values()) == 1, "nothing served twice"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_a_damaged_snapshot_file_is_named_with_the_way_out(bootstrap, unique, tmp_path):
    prefix = unique("alo-damaged") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / f"{prefix}group.snapshot"
    path.write_bytes(b"not a snapshot at all")
    code, stderr, _ = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix,
                                  "--group", f"{prefix}group", "--guarantee", "at_least_once",
                                  "--state-dir", str(folder))
    line = the_one_error_line(stderr)
    assert code == 1 and f"cannot restore {path}: not a worker snapshot" in line and "--fresh" in line, line


def test_input_deleted_before_a_restart_could_read_it_again_is_named(bootstrap, unique, tmp_path):
    """At least once, a restart resumes from its snapshot's offsets; what retention (here
    DeleteRecords) removed past them since is said, as exactly-once recovery says it."""
    prefix = unique("alo-deleted") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    events = prefix + "events"
    args = ("--guarantee", "at_least_once", "--state-dir", str(tmp_path / "state"))
    with running(bootstrap, prefix, tmp_path / "worker.log", *args):
        produce(bootstrap, events, [event(i) for i in range(100)])
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 100, 60, "100 served")
    produce(bootstrap, events, [event(i) for i in range(100, 200)])  # while it is down
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(events, 0, 150)]).values():
        future.result(timeout=30)
    with running(bootstrap, prefix, tmp_path / "again.log", *args) as worker:
        assert f"{events}[0] offsets 100-149 are gone (deleted by retention)" in worker.log(), worker.log()
        served = wait_until(lambda: len(c := Counter(predicted_ids(bootstrap, prefix))) == 150 and c, 60,
                            "the rest served")
        assert set(served) == {f"e{i}" for i in (*range(100), *range(150, 200))}


def test_offsets_the_group_refuses_leave_the_worker_serving(bootstrap, unique, tmp_path):
    """At least once, the group's offsets are committed after each snapshot, which holds
    them already. A commit the broker refuses — here because a consumer subscribed with
    the worker's group id, so a commit from outside its generation is illegal; during an
    outage because there is no coordinator — used to crash the worker with a traceback.
    Now it is a warning, the worker goes on serving, and the offsets reach the group
    with a later snapshot once the broker takes them."""
    from confluent_kafka import Consumer

    prefix = unique("alo-refused") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", "--guarantee", "at_least_once",
                           "--state-dir", str(tmp_path / "state"), "--snapshot-interval-s", "1")
    intruder = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{prefix}group",
                         "auto.offset.reset": "latest", "enable.auto.commit": False})
    try:
        worker.wait_ready()
        intruder.subscribe([f"{prefix}labels"])
        wait_until(lambda: intruder.poll(0.2) is None and bool(intruder.assignment()), 60,
                   "the other consumer in the group")
        produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
        wait_until(lambda: "not committed to the group" in worker.log(), 60, "the refused commit")
        assert worker.proc.poll() is None, worker.log()[-3000:]
        produce(bootstrap, prefix + "events", [event(i) for i in range(100, 200)])
        wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 200, 60, "every event served")
        intruder.close()
        intruder = None
        wait_until(lambda: committed_offsets(bootstrap, f"{prefix}group", prefix + "events", 1) == [200], 60,
                   "the offsets committed once the group is free")
    finally:
        if intruder is not None:
            intruder.close()
        assert worker.stop() == 0, worker.log()[-3000:]
