"""Settings: topic names, validation, the librdkafka dicts, precedence, TOML and --kafka-config."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from worker.core.config import check_keys
from worker.errors import ConfigError
from worker.settings import (
    MAX_MESSAGE_BYTES,
    KafkaSettings,
    TopicNames,
    load_toml,
    parse_kafka_config,
)

ALL_DEFAULT = ["events", "labels", "predictions", "control", "models", "worker-state", "events.dlq"]


def settings(**kw) -> KafkaSettings:
    return KafkaSettings(**({"bootstrap": "127.0.0.1:9092", "group": "fraud"} | kw))


# ----------------------------------------------------------------------------- topic names


def test_topic_names_default_and_prefixed():
    assert TopicNames().all() == ALL_DEFAULT
    assert TopicNames.from_prefix("").all() == ALL_DEFAULT
    names = TopicNames.from_prefix("shop.")
    assert names.all() == [f"shop.{n}" for n in ALL_DEFAULT]
    assert (names.worker_state, names.dlq, names.control) == (
        "shop.worker-state",
        "shop.events.dlq",
        "shop.control",
    )


@pytest.mark.parametrize("prefix", ["bad prefix", "a/b", "ü", "x" * 240])
def test_topic_prefix_that_gives_illegal_names_is_refused(prefix):
    with pytest.raises(ConfigError, match="topic_prefix"):
        TopicNames.from_prefix(prefix)
    with pytest.raises(ConfigError, match="topic_prefix"):
        settings(topic_prefix=prefix)


def test_settings_topics_follow_the_prefix():
    assert settings(topic_prefix="t-1-").topics == TopicNames.from_prefix("t-1-")


# ----------------------------------------------------------------------------- builders


def test_consumer_config():
    c = settings().consumer_config()
    assert c["bootstrap.servers"] == "127.0.0.1:9092"
    assert c["group.id"] == "fraud"
    assert c["enable.auto.commit"] is False
    assert c["isolation.level"] == "read_committed"
    assert c["auto.offset.reset"] == "earliest"
    assert c["enable.partition.eof"] is False
    assert "transactional.id" not in c


def test_producer_config_exactly_once_is_transactional_with_a_stable_id():
    s = settings(transaction_timeout_ms=30000)
    p = s.producer_config()
    assert p["transactional.id"] == "worker-fraud" == s.transactional_id
    assert settings().producer_config()["transactional.id"] == "worker-fraud", "stable per group"
    assert p["enable.idempotence"] is True
    assert p["transaction.timeout.ms"] == 30000
    assert 0 < p["message.timeout.ms"] < 30000
    assert p["linger.ms"] <= 10
    assert p["retry.backoff.ms"] < 100, "librdkafka's default stalls back-to-back transactions"
    assert p["message.max.bytes"] == MAX_MESSAGE_BYTES


def test_producer_config_at_least_once_has_no_transactions():
    s = settings(guarantee="at_least_once")
    p = s.producer_config()
    assert s.transactional_id is None
    assert "transactional.id" not in p and "transaction.timeout.ms" not in p
    assert p["enable.idempotence"] is True
    assert s.consumer_config()["enable.auto.commit"] is False


def test_admin_config():
    a = settings().admin_config()
    assert a["bootstrap.servers"] == "127.0.0.1:9092"
    assert not {"group.id", "transactional.id", "enable.auto.commit"} & set(a)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_librdkafka_accepts_every_dict(guarantee):
    """librdkafka checks names, ranges and their consistency (message vs transaction timeout)."""
    quiet = logging.getLogger("test.settings.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    s = settings(bootstrap="127.0.0.1:1", guarantee=guarantee, extra={"socket.keepalive.enable": True})
    Producer({**s.producer_config(), "logger": quiet})
    Consumer({**s.consumer_config(), "logger": quiet}).close()
    AdminClient({**s.admin_config(), "logger": quiet})


@pytest.mark.parametrize(("given", "expected"), [("true", True), ("FALSE", False), (True, True)])
def test_the_python_clients_own_flag_reaches_the_producer_as_a_bool(given, expected):
    # confluent-kafka reads delivery.report.only.error itself and raised TypeError on the
    # string that --kafka-config gives (a traceback at start instead of a running worker)
    s = settings(bootstrap="127.0.0.1:1", extra={"delivery.report.only.error": given})
    config = s.producer_config()
    assert config["delivery.report.only.error"] is expected
    quiet = logging.getLogger("test.settings.librdkafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    Producer({**config, "logger": quiet})
    with pytest.raises(ConfigError, match="'delivery.report.only.error' must be true or false, got 'yes'"):
        settings(extra={"delivery.report.only.error": "yes"}).producer_config()


def test_a_setting_the_python_client_refuses_is_a_config_error():
    from worker.io import kafka

    with pytest.raises(ConfigError, match="invalid Kafka producer setting: .*delivery.report.only.error"):
        kafka.producer({"bootstrap.servers": "127.0.0.1:1", "delivery.report.only.error": "true"})


# ----------------------------------------------------------------------------- extra: precedence, refusal


def test_extra_merges_into_every_dict_and_wins_over_defaults():
    extra = {"security.protocol": "SASL_SSL", "linger.ms": "50", "auto.offset.reset": "latest"}
    s = settings(extra=extra)
    for config in (s.consumer_config(), s.producer_config(), s.admin_config()):
        assert config["security.protocol"] == "SASL_SSL"
    assert s.producer_config()["linger.ms"] == "50"
    assert s.consumer_config()["auto.offset.reset"] == "latest"


def test_extra_values_become_strings_and_are_frozen():
    source = {"socket.keepalive.enable": True, "socket.timeout.ms": 5000}
    s = settings(extra=source)
    assert dict(s.extra) == {"socket.keepalive.enable": "true", "socket.timeout.ms": "5000"}
    source["later"] = "x"
    assert "later" not in s.extra, "the settings hold a copy"
    with pytest.raises(TypeError):
        s.extra["x"] = "y"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.group = "other"  # type: ignore[misc]
    assert settings(extra=source) == settings(extra=dict(source)), "equality compares extra"
    hash(s)


@pytest.mark.parametrize(
    "key", ["enable.auto.commit", "transactional.id", "isolation.level", "enable.idempotence"]
)
def test_exactly_once_refuses_to_override_the_keys_it_needs(key):
    with pytest.raises(ConfigError, match=f"'{key}' cannot be overridden"):
        settings(extra={key: "x"})


def test_at_least_once_allows_isolation_level_but_not_auto_commit():
    s = settings(guarantee="at_least_once", extra={"isolation.level": "read_uncommitted"})
    assert s.consumer_config()["isolation.level"] == "read_uncommitted"
    with pytest.raises(ConfigError, match="enable.auto.commit"):
        settings(guarantee="at_least_once", extra={"enable.auto.commit": "true"})


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("bootstrap.servers", "bootstrap"),
        ("group.id", "group"),
        ("transaction.timeout.ms", "transaction_timeout_ms"),
    ],
)
def test_keys_with_their_own_setting_are_refused_in_extra(key, hint):
    with pytest.raises(ConfigError, match=f"'{key}'.*{hint}"):
        settings(extra={key: "x"})


@pytest.mark.parametrize("extra", [{"": "x"}, {" a": "x"}, {"a": ["list"]}, {"a": None}, ["a=b"]])
def test_malformed_extra_is_refused(extra):
    with pytest.raises(ConfigError):
        settings(extra=extra)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"bootstrap": ""}, "bootstrap"),
        ({"bootstrap": "a:9092,,b:9092"}, "bootstrap"),
        ({"bootstrap": "host:port"}, "port"),
        ({"bootstrap": "host:70000"}, "port"),
        ({"group": ""}, "group"),
        ({"group": " g"}, "group"),
        ({"guarantee": "exactly-once"}, "guarantee"),
        ({"commit_interval_ms": 0}, "commit_interval_ms"),
        ({"commit_interval_ms": 1.5}, "commit_interval_ms"),
        ({"commit_interval_ms": True}, "commit_interval_ms"),
        ({"commit_interval_ms": 60000}, "commit_interval_ms"),
        ({"snapshot_interval_s": 0}, "snapshot_interval_s"),
        ({"snapshot_interval_s": float("nan")}, "snapshot_interval_s"),
        ({"snapshot_interval_s": "10"}, "snapshot_interval_s"),
        ({"transaction_timeout_ms": 999}, "transaction_timeout_ms"),
    ],
)
def test_invalid_values_raise_one_line_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=key) as info:
        settings(**kw)
    assert "\n" not in str(info.value)


def test_valid_variants_are_accepted():
    s = settings(bootstrap="b1:9092, b2:9093,SASL_SSL://b3:9094", snapshot_interval_s=1, commit_interval_ms=1)
    assert s.snapshot_interval_s == 1
    assert settings().commit_interval_ms == 100 and settings().guarantee == "exactly_once"


# ----------------------------------------------------------------------------- --kafka-config


def test_parse_kafka_config():
    pairs = ["security.protocol=SASL_SSL", "sasl.password=p=w", "linger.ms=1", "linger.ms=2", " a.b =", "c="]
    assert parse_kafka_config(pairs) == {
        "security.protocol": "SASL_SSL",
        "sasl.password": "p=w",
        "linger.ms": "2",
        "a.b": "",
        "c": "",
    }
    assert parse_kafka_config([]) == {}


@pytest.mark.parametrize("pair", ["novalue", "=x", " =x", "a b=c", ""])
def test_parse_kafka_config_refuses_malformed_pairs(pair):
    with pytest.raises(ConfigError, match="--kafka-config expects key=value"):
        parse_kafka_config([pair])


# ----------------------------------------------------------------------------- TOML


def test_load_toml(tmp_path):
    path = tmp_path / "worker.toml"
    path.write_text('[run]\nbootstrap = "k:9092"\npartitions = 3\n[kafka]\n"security.protocol" = "SSL"\n')
    assert load_toml(path) == {
        "run": {"bootstrap": "k:9092", "partitions": 3},
        "kafka": {"security.protocol": "SSL"},
    }
    assert load_toml(str(path))["run"]["partitions"] == 3


def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_toml(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nx = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_toml(bad)
    assert "bad.toml" in str(info.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'x = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_toml(binary)


def test_check_keys():
    check_keys({"bootstrap": 1, "group": 2}, {"bootstrap", "group", "partitions"}, "[run]")
    check_keys({}, set(), "[run]")
    with pytest.raises(
        ConfigError, match=r"unknown key 'bootstap' in \[run\] \(did you mean 'bootstrap'\?\)"
    ):
        check_keys({"bootstap": 1}, {"bootstrap", "group"}, "[run]")
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' in \[control\] \(allowed: group, reason\)"):
        check_keys({"zzz": 1}, ["reason", "group"], "[control]")
    with pytest.raises(ConfigError, match=r"\[run\] must be a table"):
        check_keys("text", {"a"}, "[run]")


@pytest.mark.parametrize("name, default", [("status_interval_s", 60.0), ("command_max_age_s", 300.0)])
@pytest.mark.parametrize("interval", [-1, float("nan"), float("inf"), True, "60"])
def test_intervals_must_be_seconds_or_zero(name, default, interval):
    from worker.runtime.worker import RunSettings

    kafka = KafkaSettings(bootstrap="127.0.0.1:9092", group="g")
    assert getattr(RunSettings(kafka=kafka, secret=b"s"), name) == default
    assert getattr(RunSettings(kafka=kafka, secret=b"s", **{name: 0}), name) == 0
    with pytest.raises(ConfigError, match=name):
        RunSettings(kafka=kafka, secret=b"s", **{name: interval})


def test_command_max_age_comes_from_the_run_table(tmp_path):
    from worker.cli import run_settings

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nsecret = "s"\ncommand_max_age_s = 60\n')
    assert run_settings(str(config), {}, ()).command_max_age_s == 60
    assert run_settings(str(config), {"command_max_age_s": 5.0}, ()).command_max_age_s == 5.0


@pytest.mark.parametrize("name", ["commit_interval_events", "snapshot_interval_events"])
@pytest.mark.parametrize("value", [-1, 1.5, True, "100"])
def test_event_intervals_must_be_counts_or_zero(name, value):
    from worker.runtime.worker import RunSettings

    kafka = KafkaSettings(bootstrap="127.0.0.1:9092", group="g")
    assert getattr(RunSettings(kafka=kafka, secret=b"s"), name) == 0  # off: by time only
    assert getattr(RunSettings(kafka=kafka, secret=b"s", **{name: 250}), name) == 250
    with pytest.raises(ConfigError, match=name):
        RunSettings(kafka=kafka, secret=b"s", **{name: value})


def test_event_intervals_come_from_the_run_table_and_the_flags(tmp_path):
    from worker.cli import run_settings

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nsecret = "s"\ncommit_interval_events = 100\n'
                      "snapshot_interval_events = 5000\n")
    settings = run_settings(str(config), {"commit_interval_events": 50}, ())
    assert (settings.commit_interval_events, settings.snapshot_interval_events) == (50, 5000)


def test_roles_and_scorer_ids():
    from worker.runtime.worker import RunSettings

    kafka = KafkaSettings(bootstrap="127.0.0.1:9092", group="g")
    assert RunSettings(kafka=kafka, secret=b"s").role == "all"
    scorer = RunSettings(kafka=kafka, secret=b"s", role="scorer", scorer_id="host-1.a_b")
    assert (scorer.role, scorer.scorer_id) == ("scorer", "host-1.a_b")
    with pytest.raises(ConfigError, match="role must be one of all, trainer, scorer"):
        RunSettings(kafka=kafka, secret=b"s", role="reader")
    for bad in ("", "a b", "x" * 101, "ü"):
        with pytest.raises(ConfigError, match="scorer_id"):
            RunSettings(kafka=kafka, secret=b"s", role="scorer", scorer_id=bad)
        assert RunSettings(kafka=kafka, secret=b"s", scorer_id=bad).role == "all"  # not used: not checked
    # scale-out relies on transactions: a trainer restored from an older local snapshot
    # would publish new models under version numbers that scorers already serve
    at_least_once = KafkaSettings(bootstrap="127.0.0.1:9092", group="g", guarantee="at_least_once")
    assert RunSettings(kafka=at_least_once, secret=b"s").role == "all"
    for role in ("trainer", "scorer"):
        with pytest.raises(ConfigError, match=f"--role {role} needs --guarantee exactly_once"):
            RunSettings(kafka=at_least_once, secret=b"s", role=role)


def test_the_scorer_id_comes_from_the_flag_the_run_table_or_the_host_name(tmp_path):
    import socket

    from worker.cli import run_settings

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nsecret = "s"\nrole = "scorer"\nscorer_id = "from-toml"\n')
    assert run_settings(str(config), {}, ()).scorer_id == "from-toml"
    assert run_settings(str(config), {"scorer_id": "from-flag"}, ()).scorer_id == "from-flag"
    config.write_text('[run]\nsecret = "s"\n')
    assert run_settings(str(config), {"scorer_id": None}, ()).scorer_id == socket.gethostname()


def test_previous_secrets_come_from_the_run_table_or_the_flags(tmp_path):
    from worker.cli import run_settings

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nsecret = "new"\nprevious_secrets = ["old", "older"]\n')
    settings = run_settings(str(config), {}, ())
    assert settings.secrets == (b"new", b"old", b"older")
    assert run_settings(str(config), {"previous_secrets": ["flag"]}, ()).secrets == (b"new", b"flag")
    config.write_text('[run]\nsecret = "new"\nprevious_secrets = "old"\n')
    with pytest.raises(ConfigError, match="previous_secrets must be a list of strings"):
        run_settings(str(config), {}, ())
    config.write_text('[run]\nsecret = "new"\nprevious_secrets = [""]\n')
    with pytest.raises(ConfigError, match="previous_secrets must be non-empty"):
        run_settings(str(config), {}, ())


def test_the_log_level_comes_from_the_run_table_unless_a_flag_says(tmp_path):
    from worker.cli import _run_log_level, run_settings

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nsecret = "s"\nlog_level = "debug"\n')
    assert _run_log_level(str(config)) == "debug" and _run_log_level(None) == "info"
    assert run_settings(str(config), {}, ()).secret == b"s"  # an accepted [run] key
    config.write_text('[run]\nlog_level = "verbose"\n')
    with pytest.raises(ConfigError, match="log_level must be one of debug, info, warning, error"):
        _run_log_level(str(config))
