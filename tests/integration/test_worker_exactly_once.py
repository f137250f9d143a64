"""`worker run` end to end on the real broker: exactly-once predictions, crashes, takeovers."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

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

pytestmark = pytest.mark.slow


def drifting_event(i: int, switch_at: int) -> tuple[bytes, bytes]:
    """Two features; the concept flips at ``switch_at`` (abrupt drift)."""
    rng = random.Random(i)
    a, b = rng.random(), rng.random()
    label = (a > b) if i < switch_at else (a < b)
    body = {"id": f"e{i}", "features": {"a": a, "b": b}, "label": label}
    return f"user-{i % 97}".encode(), orjson.dumps(body)


def predicted_counts(bootstrap: str, prefix: str) -> Counter:
    return Counter(predicted_ids(bootstrap, prefix))


def wait_for_predictions(bootstrap: str, prefix: str, n: int, timeout_s: float = 240) -> Counter:
    # 240 s: tens of thousands of events, with crashes and replays, on 2 loaded cores
    return wait_until(lambda: (c := predicted_counts(bootstrap, prefix)) and sum(c.values()) >= n and c,
                      timeout_s, f"{n} predictions", interval_s=1.0)


def status(bootstrap: str, prefix: str) -> dict:
    return status_answer(bootstrap, prefix)["detail"]


def status_answer(bootstrap: str, prefix: str) -> dict:
    """The worker's whole `status_report` (its ``offsets``: the last input offset it had
    processed per partition when it answered)."""
    out = subprocess.run([sys.executable, "-m", "worker", "control", "status", "--bootstrap", bootstrap,
                          "--topic-prefix", prefix, "--secret", SECRET, "--wait", "60"],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    answers = [orjson.loads(line) for line in out.stdout.splitlines()]
    return next(a for a in answers if a["type"] == "status_report")


def test_every_event_predicted_once_by_the_champion_of_the_moment(bootstrap, unique, tmp_path):
    prefix = unique("eo") + "."
    create_all_topics(bootstrap, prefix, partitions=3)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        produce(bootstrap, prefix + "events", (drifting_event(i, 10_000) for i in range(20_000)))
        ids = wait_for_predictions(bootstrap, prefix, 20_000)
        assert len(ids) == 20_000 and set(ids.values()) == {1}, "each event id exactly once"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]

    where = {orjson.loads(m.value())["id"]: (m.partition(), m.offset())
             for m in read_all(bootstrap, prefix + "events")}
    changes = [e for e in json_values(read_all(bootstrap, prefix + "control"))
               if e.get("type") in ("promoted", "rolled_back")]
    assert changes, "the drift at event 10,000 should lead to at least one promotion"
    events_topic = prefix + "events"

    def champion_at(partition: int, offset: int) -> int:
        champion = 1
        for change in changes:  # in control-log order
            done = change["offsets"].get(f"{events_topic}:{partition}", -1)
            if offset <= done:  # processed before this change took effect
                break
            champion = change["champion"]
        return champion

    predictions = json_values(read_all(bootstrap, prefix + "predictions"))
    wrong = [p for p in predictions if p["model_version"] != champion_at(*where[p["id"]])]
    assert not wrong, f"{len(wrong)} predictions not served by the champion of the moment: {wrong[:3]}"
    assert {p["served_by"] for p in predictions} == {"champion"}


class Sender(threading.Thread):
    """Writes events at a steady rate in the background (see `steady_producer`)."""

    def __init__(self, bootstrap: str, topic: str, events, rate_per_s: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events, self.rate_per_s = bootstrap, topic, events, rate_per_s
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            began = time.monotonic()
            batch = []
            for n, record in enumerate(self.events, start=1):
                batch.append(record)
                if len(batch) == 500:
                    # each batch acknowledged before the next; a broker stopped by the test
                    # may take a minute or more to come back (a JVM start on a loaded machine)
                    produce(self.bootstrap, self.topic, batch, flush_s=300)
                    batch = []
                    ahead = n / self.rate_per_s - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the load, not synchronisation
            produce(self.bootstrap, self.topic, batch, flush_s=300)
        except BaseException as e:  # noqa: BLE001 - handed to the test by finish()
            self.error = e

    def finish(self, timeout_s: float) -> None:
        """Wait until every event was written; fail if that did not happen in time or the
        sender failed (else the test would wait for predictions of events never sent)."""
        self.join(timeout_s)
        assert not self.is_alive(), f"the sender did not finish writing to {self.topic} in {timeout_s:g}s"
        if self.error is not None:
            raise AssertionError(f"the sender failed: {self.error!r}") from self.error


def steady_producer(bootstrap: str, topic: str, events, rate_per_s: float) -> Sender:
    sender = Sender(bootstrap, topic, events, rate_per_s)
    sender.start()
    return sender


def test_kill_9_three_times_loses_and_duplicates_nothing(bootstrap, unique, tmp_path):
    prefix = unique("crash") + "."
    create_all_topics(bootstrap, prefix, partitions=3)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(bootstrap, prefix, log)
    worker.wait_ready()
    sender = steady_producer(bootstrap, prefix + "events", (drifting_event(i, 25_000) for i in range(50_000)),
                             rate_per_s=4000)
    for moment in sorted(random.Random(7).sample(range(5_000, 45_000), 3)):  # while events flow
        wait_until(lambda t=moment: len(predicted_ids(bootstrap, prefix)) > t,
                   90, "predictions to progress", interval_s=0.3)
        worker.kill()
        worker = WorkerProcess(bootstrap, prefix, log)
        worker.wait_ready()
    sender.finish(300)
    try:
        ids = wait_for_predictions(bootstrap, prefix, 50_000)
        assert len(ids) == 50_000, f"missing {50_000 - len(ids)} event ids"
        assert max(ids.values()) == 1, f"duplicated: {[k for k, v in ids.items() if v > 1][:5]}"
        final = status(bootstrap, prefix)
        assert final["counts"]["events"] == 50_000, final["counts"]
        assert final["counts"]["labelled"] == 50_000, "every labelled event learned exactly once"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]
    assert log.read_text().count('"message": "restored engine') == 3


def test_input_deleted_by_retention_before_its_replay_is_reported(bootstrap, unique, tmp_path):
    """Down longer than `events` keeps its messages: what a recovery should replay is gone.
    Nothing can bring it back, but the worker must say so rather than go on silently."""
    prefix = unique("retention") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(bootstrap, prefix, log, "--snapshot-interval-s", "600")  # replay all after a crash
    worker.wait_ready()
    produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) == 100, 60, "100 predictions")
    worker.kill()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_records([TopicPartition(prefix + "events", 0, 40)]).values():
        future.result(timeout=30)
    worker = WorkerProcess(bootstrap, prefix, log, "--snapshot-interval-s", "600")
    try:
        worker.wait_ready()
        assert f"{prefix}events[0] offsets 0-39 are gone (deleted by retention)" in worker.log()
        produce(bootstrap, prefix + "events", [event(100)])  # once it is served, so is what came before
        ids = wait_until(lambda: len(got := predicted_ids(bootstrap, prefix)) >= 101 and got, 60,
                         "the next event served")
        assert Counter(ids) == Counter(f"e{i}" for i in range(101)), "nothing predicted twice"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def test_one_partition_crashes_end_where_an_uninterrupted_run_ends(bootstrap, unique, tmp_path):
    events = [drifting_event(i, 8_000) for i in range(16_000)]
    finals = []
    for kills in (0, 2):
        prefix = unique(f"det{kills}") + "."
        create_all_topics(bootstrap, prefix, partitions=1)
        worker = WorkerProcess(bootstrap, prefix, tmp_path / f"worker{kills}.log")
        worker.wait_ready()
        produce(bootstrap, prefix + "events", events)
        for k in range(kills):
            wait_until(lambda k=k, p=prefix: len(predicted_ids(bootstrap, p)) > 4000 * (k + 1), 90,
                       "progress before the kill", interval_s=0.3)
            worker.kill()
            worker = WorkerProcess(bootstrap, prefix, tmp_path / f"worker{kills}.log")
            worker.wait_ready()
        try:
            wait_for_predictions(bootstrap, prefix, len(events))
            finals.append(status(bootstrap, prefix))
        finally:
            assert worker.stop() == 0
    uninterrupted, crashed = finals
    assert uninterrupted["counts"]["promotions"] >= 1
    for key in ("champion", "challenger", "counts", "served", "models", "test"):
        assert crashed[key] == uninterrupted[key], key


def test_a_second_instance_takes_over_and_fences_the_first(bootstrap, unique, tmp_path):
    prefix = unique("roll") + "."
    create_all_topics(bootstrap, prefix, partitions=4)
    old = WorkerProcess(bootstrap, prefix, tmp_path / "old.log")
    old.wait_ready()
    sender = steady_producer(bootstrap, prefix + "events", (drifting_event(i, 10**9) for i in range(30_000)),
                             rate_per_s=3000)
    wait_until(lambda: len(predicted_ids(bootstrap, prefix)) > 5000, 60, "the old worker to serve")
    new = WorkerProcess(bootstrap, prefix, tmp_path / "new.log")
    try:
        new.wait_ready()
        code = old.proc.wait(60)
        assert code != 0 and "fenced" in old.log(), old.log()[-2000:]
        sender.finish(300)
        ids = wait_for_predictions(bootstrap, prefix, 30_000)
        assert len(ids) == 30_000 and max(ids.values()) == 1
    finally:
        assert new.stop() == 0, new.log()[-3000:]


def test_an_instance_on_the_old_secret_knows_it_was_fenced_by_one_on_the_new(bootstrap, unique, tmp_path):
    """A rolling restart that rotates the secret: the old instance, still on the old secret,
    reads worker-state to tell a takeover from a timeout. It finds a snapshot it cannot
    verify there, and must still say "fenced", not that the state was tampered with. It
    is frozen while the new one takes over, so that the snapshot is there when it looks."""
    prefix = unique("rotate-roll") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    old = WorkerProcess(bootstrap, prefix, tmp_path / "old.log")
    new = None
    try:
        old.wait_ready()
        produce(bootstrap, prefix + "events", [event(i) for i in range(200)])
        wait_for_predictions(bootstrap, prefix, 200, 60)
        os.killpg(old.proc.pid, signal.SIGSTOP)
        new = WorkerProcess(bootstrap, prefix, tmp_path / "new.log",
                            "--secret", "new-secret", "--previous-secret", SECRET)
        new.wait_ready()
        os.killpg(old.proc.pid, signal.SIGCONT)
        code = old.proc.wait(60)
        assert code == 1 and "fenced: another instance" in old.log(), old.log()[-2000:]
        assert "signature" not in old.log(), old.log()[-2000:]
        produce(bootstrap, prefix + "events", [event(i) for i in range(200, 300)])
        assert wait_for_predictions(bootstrap, prefix, 300, 60) == Counter(f"e{i}" for i in range(300))
    finally:
        if old.proc.poll() is None:
            os.killpg(old.proc.pid, signal.SIGCONT)
        if new is not None:
            assert new.stop() == 0, new.log()[-3000:]


def test_a_stop_during_the_replay_of_a_start_exits_at_once_and_the_next_start_replays(
        bootstrap, unique, tmp_path):
    """SIGTERM while a start replays the input since the last snapshot (seconds of it):
    the worker stops replaying, exits 0 without becoming ready, and the next start
    replays it all again; every event is served once."""
    prefix = unique("stop-replay") + "."
    create_all_topics(bootstrap, prefix, partitions=2)
    rare_snapshots = ("--snapshot-interval-s", "3600")  # all the input after the start is replayed
    first = WorkerProcess(bootstrap, prefix, tmp_path / "first.log", *rare_snapshots)
    first.wait_ready()
    produce(bootstrap, prefix + "events", [event(i) for i in range(60_000)])
    wait_for_predictions(bootstrap, prefix, 60_000)
    first.kill()

    stopped = WorkerProcess(bootstrap, prefix, tmp_path / "stopped.log", *rare_snapshots)
    wait_until(lambda: "restored engine" in stopped.log(), 120, "the restore before the replay")
    began = time.monotonic()
    stopped.proc.send_signal(signal.SIGTERM)
    assert stopped.stop() == 0, stopped.log()[-3000:]
    took = time.monotonic() - began
    assert "stopped while recovering" in stopped.log() and "recovered: replayed" not in stopped.log(), \
        stopped.log()[-3000:]

    again = WorkerProcess(bootstrap, prefix, tmp_path / "again.log")
    try:
        again.wait_ready()
        replayed = re.search(r"recovered: replayed \d+ input ranges in ([\d.]+)s", again.log())
        assert replayed, again.log()[-3000:]
        assert took < float(replayed[1]), f"the stop took {took:.1f} s, the whole replay {replayed[1]} s"
        produce(bootstrap, prefix + "events", [event(i) for i in range(60_000, 60_100)])
        assert wait_for_predictions(bootstrap, prefix, 60_100) == Counter(f"e{i}" for i in range(60_100))
    finally:
        assert again.stop() == 0, again.log()[-3000:]


def test_offsets_moved_back_by_hand_are_served_again_and_the_log_says_what_that_does(
        bootstrap, unique, tmp_path):
    """An operator moves the group's offsets back while the worker is stopped, to serve
    input again: the worker says that it predicts it again and learns its labels twice."""
    prefix = unique("moved-back") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    worker.wait_ready()
    produce(bootstrap, prefix + "events", [event(i) for i in range(300)])
    wait_for_predictions(bootstrap, prefix, 300, 60)
    assert worker.stop() == 0, worker.log()[-3000:]

    admin = AdminClient({"bootstrap.servers": bootstrap})
    moved = ConsumerGroupTopicPartitions(prefix + "group", [TopicPartition(prefix + "events", 0, 100)])
    for future in admin.alter_consumer_group_offsets([moved]).values():
        future.result(timeout=30)
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        assert (f"{prefix}events[0]: the group's committed offset 100 is at or before 299, the last offset "
                "the restored state has processed: were the offsets moved back by hand? Offsets 100-299 "
                "are processed again") in worker.log(), worker.log()[-3000:]
        counts = wait_for_predictions(bootstrap, prefix, 500, 60)
        assert counts == Counter({f"e{i}": 1 if i < 100 else 2 for i in range(300)})
        assert status(bootstrap, prefix)["counts"]["labelled"] == 500, "as the warning says: learned twice"
    finally:
        assert worker.stop() == 0, worker.log()[-3000:]


def produce_to(bootstrap: str, topic: str, partition: int, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def grow(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_partitions([NewPartitions(t, partitions) for t in topics]).values():
        future.result(timeout=30)


def label(i: int) -> tuple[bytes, bytes]:
    key, value = event(i)
    return key, orjson.dumps({"id": f"e{i}", "label": orjson.loads(value)["label"]})


def test_partitions_added_to_the_inputs_are_read_and_survive_a_crash(bootstrap, unique, tmp_path):
    """A manual assignment does not follow a topic's growth by itself: partitions added to
    `events` and `labels` while the worker runs are read within seconds, from their
    beginning, and a kill -9 afterwards loses and duplicates nothing on them."""
    prefix = unique("grow") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    events, labels = prefix + "events", prefix + "labels"
    worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker.log", "--warmup-labels", "50")
    try:
        worker.wait_ready()
        produce_to(bootstrap, events, 0, [event(i) for i in range(100)])
        wait_for_predictions(bootstrap, prefix, 100, 60)

        grow(bootstrap, [events, labels], 2)
        produce_to(bootstrap, events, 1, [event(i, label=None) for i in range(100, 200)])
        produce_to(bootstrap, labels, 1, [label(i) for i in range(100, 200)])
        wait_for_predictions(bootstrap, prefix, 200, 60)
        assert f"new partitions: {events}[1], {labels}[1]" in worker.log()
        assert wait_until(lambda: status(bootstrap, prefix)["counts"]["labelled"] == 200, 30,
                          "the labels of the new partition to be joined")

        worker.kill()
        worker = WorkerProcess(bootstrap, prefix, tmp_path / "worker-again.log")
        worker.wait_ready()
        produce_to(bootstrap, events, 1, [event(i) for i in range(200, 300)])
        produce_to(bootstrap, events, 0, [event(i) for i in range(300, 400)])
        counts = wait_for_predictions(bootstrap, prefix, 400, 60)
        assert counts == Counter(f"e{i}" for i in range(400)), "each event once"
        assert status(bootstrap, prefix)["counts"]["labelled"] == 400, "each label learned once"
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]


def test_two_deployments_sharing_a_group_stop_fencing_each_other(bootstrap, unique, tmp_path):
    """Two prefixes, one --group: the same transactional.id. Neither sees the other in
    its own worker-state, so each took the other's fencing for a timed-out transaction
    of its own and fenced back, forever. Now the third such failure within 3 minutes
    stops a worker with a message that names the cause; the other one goes on."""
    group = unique("shared") + ".group"
    workers = []
    for name in ("a", "b"):
        prefix = unique(f"deploy-{name}") + "."
        create_all_topics(bootstrap, prefix, partitions=1)
        workers.append((prefix, WorkerProcess(bootstrap, prefix, tmp_path / f"{name}.log", "--group", group)))
        workers[-1][1].wait_ready()
    try:
        # Each fencing costs ~14 s on a loaded 2-core machine (a 5 s look at worker-state, a
        # new producer, its recovery, then the other's next transaction), so a worker's
        # third comes ~55 s after its first, well inside the worker's 180 s.
        wait_until(lambda: any(w.proc.poll() is not None for _, w in workers), 240, "one worker to stop")
        [(_, stopped)] = [(p, w) for p, w in workers if w.proc.poll() is not None]
        [(prefix, survivor)] = [(p, w) for p, w in workers if w.proc.poll() is None]
        assert stopped.proc.returncode != 0
        assert f"does another deployment use group {group!r}? Give each its own --group" in stopped.log()
        produce(bootstrap, prefix + "events", [drifting_event(i, 10**9) for i in range(100)])
        assert wait_for_predictions(bootstrap, prefix, 100, 60) == Counter(f"e{i}" for i in range(100))
    finally:
        codes = [w.stop() for _, w in workers if w.proc.poll() is None]
    assert codes == [0], [w.log()[-2000:] for _, w in workers]
