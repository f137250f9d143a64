"""`worker simulate` against the real broker: what it says it sent is what is on the topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.integration.harness import create_all_topics, json_values, read_all, wait_until

N = 3000
DELAY = 40
ENTITIES = 12


def simulate(bootstrap: str, prefix: str, *args: str, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    return subprocess.Popen([sys.executable, "-m", "worker", "simulate", "--bootstrap", bootstrap,
                             "--topic-prefix", prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **popen)


def written(bootstrap: str, topic: str) -> int:
    """Messages on partition 0 of ``topic`` so far (its high watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    except KafkaException:  # a just-created partition may not have its leader yet: ask again
        return 0
    finally:
        consumer.close()


def test_events_with_delayed_labels(bootstrap: str, unique) -> None:
    prefix = unique("sim") + "."
    create_all_topics(bootstrap, prefix, partitions=3)
    proc = simulate(bootstrap, prefix, "--events", str(N), "--labels", "topic", "--label-delay", str(DELAY),
                    "--entities", str(ENTITIES), "--id-prefix", "it-", "--generator", "agrawal",
                    "--concepts", "0,1", "--drift-at", "50%", "--seed", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    said = json.loads(out.strip().splitlines()[-1])
    assert (said["events"], said["labels"], said["failed"], said["interrupted"]) == (N, N, 0, False)

    events = read_all(bootstrap, prefix + "events")
    labels = read_all(bootstrap, prefix + "labels")
    assert len(events) == len(labels) == N
    bodies = json_values(events)
    ids = [b["id"] for b in bodies]
    assert sorted(ids) == sorted(f"it-{i}" for i in range(N))  # each id once
    assert all("label" not in b and set(b) == {"id", "ts", "features"} for b in bodies)

    # keys: the entities, each always on the same partition
    partitions_of = defaultdict(set)
    for msg in events:
        partitions_of[msg.key().decode()].add(msg.partition())
    assert set(partitions_of) == {f"user-{k}" for k in range(ENTITIES)}
    assert all(len(p) == 1 for p in partitions_of.values())

    # the label of event i was sent after event i + DELAY and before event i + DELAY + 1
    event_ts = {b["id"]: b["ts"] for b in bodies}
    label_of = {b["id"]: b for b in json_values(labels)}
    assert set(label_of) == set(event_ts)
    for i in range(N):
        ts = label_of[f"it-{i}"]["ts"]
        after = f"it-{min(i + DELAY, N - 1)}"
        assert ts >= event_ts[after], (i, ts, event_ts[after])
        if i + DELAY + 1 < N:
            assert ts <= event_ts[f"it-{i + DELAY + 1}"], i
    assert {type(b["label"]) for b in label_of.values()} == {bool}


def test_ctrl_c_stops_cleanly_and_counts_what_was_sent(bootstrap: str, unique) -> None:
    prefix = unique("simstop") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    proc = simulate(bootstrap, prefix, "--events", "0", "--rate", "400", "--labels", "topic",
                    "--label-delay", "10", "--id-prefix", "s-")
    try:
        wait_until(lambda: written(bootstrap, prefix + "events") >= 200, 60, "events on the topic",
                   interval_s=0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    said = json.loads(out.strip().splitlines()[-1])
    assert said["interrupted"] is True and said["failed"] == 0
    assert "stopped: sent" in err
    events, labels = read_all(bootstrap, prefix + "events"), read_all(bootstrap, prefix + "labels")
    assert said["events"] == len(events) >= 200
    # the labels of the last 10 events were still waiting (11: Ctrl-C came before the next label)
    assert said["labels"] == len(labels) and said["events"] - 11 <= said["labels"] <= said["events"] - 10


def test_inline_labels_need_no_labels_topic(bootstrap: str, unique) -> None:
    """`labels` is the one optional topic: only --labels topic writes there."""
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = unique("sim-nolabels") + "."
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(prefix + "events", 1, 1)]).values():
        future.result(timeout=30)
    proc = simulate(bootstrap, prefix, "--events", "50", "--labels", "inline")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(read_all(bootstrap, prefix + "events")) == 50
    proc = simulate(bootstrap, prefix, "--events", "50", "--labels", "topic")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and f"missing topic: {prefix}labels" in err, err


def test_a_file_is_sent_whole_by_default(bootstrap: str, unique, tmp_path) -> None:
    """`--events` defaults to 10,000 for a generator, not for a file: every row goes."""
    prefix = unique("simfile") + "."
    create_all_topics(bootstrap, prefix, partitions=1)
    rows = 10_500
    data = tmp_path / "rows.csv"
    data.write_text("x,y\n" + "".join(f"{i / rows},{'UP' if i % 3 else 'DOWN'}\n" for i in range(rows)))
    proc = simulate(bootstrap, prefix, "--file", str(data), "--target", "y", "--positive", "UP",
                    "--no-progress")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["events"] == rows
    assert len(read_all(bootstrap, prefix + "events")) == rows
