"""`worker topics create` and `missing_topics` against a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from worker.errors import ConfigError
from worker.io.topics import CONNECT_TIMEOUT_S, create_topics, missing_topics
from worker.settings import MAX_MESSAGE_BYTES, TopicNames

TIMEOUT_S = 60


def worker(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def statuses(stdout: str) -> dict[str, str]:
    """{topic: status} from the `<status> <topic>` lines of `worker topics create`."""
    return {name: status for status, name in (line.split() for line in stdout.splitlines())}


def test_topics_create_makes_every_topic_and_is_idempotent(bootstrap, unique):
    prefix = unique("ws") + "."
    names = TopicNames.from_prefix(prefix)
    args = ["topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--partitions", "3"]

    first = worker(*args)
    assert first.returncode == 0, first.stderr
    assert statuses(first.stdout) == {name: "created" for name in names.all()}

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = admin.list_topics(timeout=30).topics
    partitions = {name: len(topics[name].partitions) for name in names.all()}
    assert partitions == {
        names.events: 3,
        names.labels: 3,
        names.predictions: 3,
        names.control: 1,
        names.models: 1,
        names.worker_state: 1,
        names.dlq: 3,
    }

    resources = {name: ConfigResource(ConfigResource.Type.TOPIC, name) for name in names.all()}
    futures = admin.describe_configs(list(resources.values()))
    configs = {name: futures[r].result(timeout=30) for name, r in resources.items()}
    for name in (names.models, names.worker_state):
        assert configs[name]["cleanup.policy"].value == "compact"
        assert configs[name]["max.message.bytes"].value == str(MAX_MESSAGE_BYTES)
    for name in (names.events, names.predictions, names.control, names.dlq):
        assert configs[name]["cleanup.policy"].value == "delete"
    # the broker dates control messages itself: a replayed command cannot forge its time
    assert configs[names.control]["message.timestamp.type"].value == "LogAppendTime"
    assert configs[names.events]["message.timestamp.type"].value == "CreateTime"

    second = worker(*args)
    assert second.returncode == 0, second.stderr
    assert statuses(second.stdout) == {name: "exists" for name in names.all()}


def test_options_come_from_worker_env_vars(bootstrap, unique):
    prefix = unique("env") + "-"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env |= {
        "WORKER_BOOTSTRAP": bootstrap,
        "WORKER_TOPIC_PREFIX": prefix,
        "WORKER_PARTITIONS": "2",
        "WORKER_KAFKA_CONFIG": "socket.keepalive.enable=true client.rack=r1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "worker", "topics", "create"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert statuses(out.stdout) == {name: "created" for name in TopicNames.from_prefix(prefix).all()}
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    assert len(topics[prefix + "events"].partitions) == 2


def test_an_existing_control_topic_with_several_partitions_is_refused(bootstrap, unique, create_topic):
    prefix = unique("bad") + "-"
    create_topic(prefix + "control", partitions=2)
    out = worker("topics", "create", "--bootstrap", bootstrap, "--topic-prefix", prefix)
    assert out.returncode == 2
    assert f"'{prefix}control' exists with 2 partitions" in out.stderr


def test_missing_topics_names_exactly_the_missing_ones(bootstrap, unique, create_topic):
    present = [create_topic(unique("a")), create_topic(unique("b"), partitions=2)]
    absent = [unique("c"), unique("d")]
    required = [absent[0], present[0], absent[1], present[1]]
    assert missing_topics({"bootstrap.servers": bootstrap}, required) == absent
    assert missing_topics({"bootstrap.servers": bootstrap}, present) == []


def test_create_topics_in_process_reports_created_then_exists(bootstrap, unique):
    names = TopicNames.from_prefix(unique("lib") + "-")
    config = {"bootstrap.servers": bootstrap}
    assert create_topics(config, names, 1) == {name: "created" for name in names.all()}
    assert create_topics(config, names, 1) == {name: "exists" for name in names.all()}
    assert missing_topics(config, names.all()) == []


def test_unreachable_broker_is_a_config_error_with_one_line_quickly():
    """Quickly: within the connect bound (CONNECT_TIMEOUT_S, 8 s) and the process's own
    start-up (interpreter and imports: under a second alone, a few on 2 cores under
    `pytest -n 4`; 12 s allowed), where librdkafka alone would retry for ever."""
    started = time.monotonic()
    out = worker("topics", "create", "--bootstrap", "127.0.0.1:1", timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("worker: configuration error: cannot reach Kafka at 127.0.0.1:1: ")
    assert out.stdout == ""
    assert elapsed < CONNECT_TIMEOUT_S + 12, elapsed


def test_missing_topics_on_an_unreachable_broker_raises_config_error():
    started = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach Kafka at 127.0.0.1:1"):
        missing_topics({"bootstrap.servers": "127.0.0.1:1"}, ["events"], timeout_s=2)
    assert time.monotonic() - started < 10  # in process: the 2 s given, a client's set-up and close


def test_an_existing_models_topic_that_is_not_compacted_is_refused(bootstrap, unique, create_topic):
    names = TopicNames.from_prefix(unique("nc") + "-")
    create_topic(names.models)
    with pytest.raises(ConfigError, match=f"'{names.models}' exists with cleanup.policy=delete"):
        create_topics({"bootstrap.servers": bootstrap}, names, 1)
