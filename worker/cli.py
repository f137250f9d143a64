"""The `worker` command line: the only place that reads the environment and files.

Every option is also settable as a `WORKER_*` environment variable (click's
`auto_envvar_prefix`) and, for commands that take `--config`, in a TOML file; the CLI
turns all of that into frozen settings objects and hands them to the components.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
from pathlib import Path

import click

from worker import __version__
from worker.errors import ConfigError, WorkerError


@click.group(context_settings={"auto_envvar_prefix": "WORKER", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="worker")
def cli() -> None:
    """Champion/challenger online learning on Kafka."""


# ------------------------------------------------------------------------ engine options
# Shared by `replay` and `run`: flags (and WORKER_* variables) win over the TOML file's
# [engine] table (with its [engine.promotion] sub-table), which wins over the defaults.

ENGINE_OPTIONS = [
    click.option("--config", "config_path", envvar="WORKER_CONFIG", type=click.Path(dir_okay=False),
                 help="TOML file with an [engine] table (and [engine.promotion])."),
    click.option("--champion", envvar="WORKER_CHAMPION", help="Model spec of version 1."),
    click.option("--challenger", envvar="WORKER_CHALLENGER",
                 help="Model spec of fresh challengers (default: the champion's)."),
    click.option("--challenger-init", envvar="WORKER_CHALLENGER_INIT", type=click.Choice(["fresh", "copy"]),
                 help="New challengers: untrained from the spec, or a trained copy of the champion."),
    click.option("--policy", envvar="WORKER_POLICY", type=click.Choice(["auto", "manual"]),
                 help="auto: the engine promotes and rolls back; manual: operators only."),
    click.option("--champion-learns/--champion-frozen", "champion_learns", default=None,
                 envvar="WORKER_CHAMPION_LEARNS", help="Keep the champion learning after the warm-up."),
    click.option("--warmup-labels", envvar="WORKER_WARMUP_LABELS", type=click.IntRange(min=1),
                 help="Labelled events version 1 learns from before the first challenger [500]."),
]


def engine_options(command):
    for option in reversed(ENGINE_OPTIONS):
        command = option(command)
    return command


def load_document(config_path: str | None) -> dict:
    """The TOML file's tables ({} without a file); only [engine] and [run] are known."""
    from worker.settings import check_keys, load_toml

    if not config_path:
        return {}
    document = load_toml(Path(config_path))
    check_keys(document, {"engine", "run"}, f"the top level of {config_path}")
    return document


def engine_config(config_path: str | None, **flags):
    """The frozen engine settings from the TOML file's [engine] table and the flags."""
    from worker.core.config import EngineConfig
    from worker.core.modelspec import validate_model
    from worker.errors import SpecError

    values = dict(load_document(config_path).get("engine", {}))
    values.update({k: v for k, v in flags.items() if v is not None})
    for name in ("champion", "challenger"):  # say which of the two specs is refused
        if isinstance(values.get(name), str):
            try:
                validate_model(values[name])
            except SpecError as e:
                raise SpecError(f"{name}: {e}") from None
    return EngineConfig.from_mapping(values)


# ----------------------------------------------------------------------------- worker replay


@cli.command("replay")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", help="CSV: the label column.")
@click.option("--positive", help="CSV: the label value that means true (binary labels), e.g. UP.")
@click.option("--id-column", help="CSV: the column holding the event id (default: the row number).")
@click.option("--drop-column", "drop", multiple=True, help="CSV: a column to ignore; repeatable.")
@engine_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/replay"), show_default=True,
              help="Folder for lifecycle.jsonl, timeline.jsonl and summary.json.")
@click.option("--timeline-every", type=click.IntRange(min=1), default=500, show_default=True,
              help="Labelled events between two timeline points.")
def replay_command(file: Path, target, positive, id_column, drop, out_dir: Path, timeline_every: int,
                   config_path, **engine_flags) -> None:
    """Run the engine over FILE (JSONL events, or CSV with --target) and write what happened."""
    from worker.core.engine import Engine
    from worker.io.files import read_records
    from worker.runtime.replay import replay

    engine = Engine(engine_config(config_path, **engine_flags))
    records = read_records(file, target=target, id_column=id_column, drop=drop, positive=positive)
    with click.progressbar(length=_count_lines(file), label=f"replay {file.name}", file=sys.stderr) as bar:
        summary = replay(records, engine, out_dir, timeline_every=timeline_every,
                         on_record=lambda: bar.update(1))
    brief = {k: v for k, v in summary.items() if k not in ("models", "bad_examples", "pending")}
    click.echo(json.dumps(brief, indent=2))
    click.echo(f"outputs: {out_dir}/summary.json, lifecycle.jsonl, timeline.jsonl")


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


# ------------------------------------------------------------------------------- worker run

RUN_KEYS = {"bootstrap", "group", "topic_prefix", "guarantee", "commit_interval_ms", "snapshot_interval_s",
            "transaction_timeout_ms", "metrics_port", "secret", "require_signed_commands", "state_dir",
            "max_batch", "fresh", "kafka"}


@cli.command("run")
@click.option("--bootstrap", envvar="WORKER_BOOTSTRAP", help="Kafka bootstrap servers [127.0.0.1:9092].")
@click.option("--group", envvar="WORKER_GROUP", help="Group: offsets, transactional.id, one active instance.")
@click.option("--topic-prefix", envvar="WORKER_TOPIC_PREFIX", help="Prefix of every topic name.")
@engine_options
@click.option("--guarantee", envvar="WORKER_GUARANTEE", type=click.Choice(["exactly_once", "at_least_once"]))
@click.option("--commit-interval-ms", envvar="WORKER_COMMIT_INTERVAL_MS", type=click.IntRange(min=1),
              help="One transaction per interval [100].")
@click.option("--snapshot-interval-s", envvar="WORKER_SNAPSHOT_INTERVAL_S", type=click.FloatRange(min=0.01),
              help="A signed engine snapshot per interval [10].")
@click.option("--metrics-port", envvar="WORKER_METRICS_PORT", type=click.IntRange(0, 65535),
              help="Serve /metrics, /healthz and /readyz on this port.")
@click.option("--secret", envvar="WORKER_SECRET", help="Signs snapshots and the worker's commands.")
@click.option("--require-signed-commands/--accept-unsigned-commands", default=None,
              envvar="WORKER_REQUIRE_SIGNED_COMMANDS",
              help="Reject control commands without a valid signature.")
@click.option("--fresh", is_flag=True, default=None, envvar="WORKER_FRESH",
              help="Ignore the stored state; start from scratch.")
@click.option("--state-dir", envvar="WORKER_STATE_DIR", help="at_least_once: folder of the snapshot file.")
@click.option("--kafka-config", "kafka_config", envvar="WORKER_KAFKA_CONFIG", multiple=True,
              metavar="KEY=VALUE", help="librdkafka setting passed through (SASL, TLS …); repeatable.")
@click.option("--log-level", envvar="WORKER_LOG_LEVEL", default="info", show_default=True)
def run_command(config_path, bootstrap, group, topic_prefix, guarantee, commit_interval_ms,
                snapshot_interval_s, metrics_port, secret, require_signed_commands, fresh, state_dir,
                kafka_config, log_level, **engine_flags) -> None:
    """Serve, evaluate, train and decide on Kafka: the main job."""
    from worker.obs import logs
    from worker.runtime.worker import Worker

    logs.setup(log_level)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    flags = {"bootstrap": bootstrap, "group": group, "topic_prefix": topic_prefix, "guarantee": guarantee,
             "commit_interval_ms": commit_interval_ms, "snapshot_interval_s": snapshot_interval_s,
             "metrics_port": metrics_port, "secret": secret, "state_dir": state_dir, "fresh": fresh,
             "require_signed_commands": require_signed_commands}
    settings = run_settings(config_path, flags, kafka_config)
    worker = Worker(settings, engine_config(config_path, **engine_flags))
    if settings.metrics_port is not None:
        from worker.obs.server import serve

        worker.observer = serve(worker, settings.metrics_port)
    worker.run()


def run_settings(config_path: str | None, flags: dict, kafka_config: tuple[str, ...]):
    """TOML [run] table, overridden by the flags, → a frozen RunSettings."""
    from worker.runtime.worker import RunSettings
    from worker.settings import KafkaSettings, check_keys, parse_kafka_config

    values = dict(load_document(config_path).get("run", {}))
    check_keys(values, RUN_KEYS, "[run]")
    values.update({k: v for k, v in flags.items() if v is not None})
    extra = {**values.pop("kafka", {}), **parse_kafka_config(kafka_config)}
    kafka = KafkaSettings(
        bootstrap=values.pop("bootstrap", "127.0.0.1:9092"), group=values.pop("group", "worker"),
        topic_prefix=values.pop("topic_prefix", ""), extra=extra,
        **{k: values.pop(k) for k in ("guarantee", "commit_interval_ms", "snapshot_interval_s",
                                      "transaction_timeout_ms") if k in values},
    )
    secret = values.pop("secret", None)
    state_dir = values.pop("state_dir", None)
    return RunSettings(kafka=kafka, secret=(secret or "").encode(),
                       **({"state_dir": Path(state_dir)} if state_dir else {}), **values)


# --------------------------------------------------------------------------- worker control


def control_options(command):
    options = [
        click.option("--bootstrap", envvar="WORKER_BOOTSTRAP", default="127.0.0.1:9092", show_default=True),
        click.option("--topic-prefix", envvar="WORKER_TOPIC_PREFIX", default=""),
        click.option("--secret", envvar="WORKER_SECRET", help="Sign the command with this secret."),
        click.option("--expected-champion", type=int, help="Reject unless this version is the champion."),
        click.option("--reason", default="", help="Why (kept in the control log)."),
        click.option("--issued-by", envvar="USER", default="operator", show_default=True),
        click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
                     help="Seconds to wait for the worker's answer."),
        click.option("--kafka-config", "kafka_config", envvar="WORKER_KAFKA_CONFIG", multiple=True,
                     metavar="KEY=VALUE"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.group("control")
def control_group() -> None:
    """Send a command on the control topic and print the worker's answer (exit 1 if rejected)."""


def _send(kind: str, bootstrap, topic_prefix, secret, expected_champion, reason, issued_by, wait_s,
          kafka_config, **fields) -> None:
    import time
    import uuid

    from worker.core.types import Command
    from worker.io.control import send_and_wait
    from worker.settings import KafkaSettings, parse_kafka_config

    settings = KafkaSettings(bootstrap=bootstrap, group="worker-control", topic_prefix=topic_prefix,
                             extra=parse_kafka_config(kafka_config))
    command = Command(type=kind, command_id=str(uuid.uuid4()), issued_by=issued_by, reason=reason,
                      expected_champion=expected_champion, ts=time.time(), **fields)
    answers = send_and_wait(settings.admin_config(), settings.topics.control, command,
                            secret.encode() if secret else None, wait_s)
    if answers is None:
        click.echo(json.dumps({"command_id": command.command_id, "error": f"no answer within {wait_s:g}s"}))
        sys.exit(1)
    for answer in answers:
        click.echo(json.dumps(answer))
    sys.exit(0 if answers[-1]["type"] == "command_applied" else 1)


@control_group.command("promote")
@control_options
def control_promote(**options) -> None:
    """Promote the challenger to champion."""
    _send("promote", **options)


@control_group.command("rollback")
@control_options
@click.option("--to-version", type=int, help="Version to restore (default: the previous champion).")
def control_rollback(to_version, **options) -> None:
    """Restore a former champion."""
    _send("rollback", to_version=to_version, **options)


@control_group.command("pause")
@control_options
def control_pause(**options) -> None:
    """Stop training (serving goes on)."""
    _send("pause_learning", **options)


@control_group.command("resume")
@control_options
def control_resume(**options) -> None:
    """Resume training."""
    _send("resume_learning", **options)


@control_group.command("reset")
@control_options
def control_reset(**options) -> None:
    """Replace the challenger with a new one."""
    _send("reset_challenger", **options)


@control_group.command("split")
@control_options
@click.argument("percent", type=click.FloatRange(0, 100))
def control_split(percent, **options) -> None:
    """Serve the challenger to PERCENT % of entities (sticky by event key)."""
    _send("set_split", percent=percent, **options)


@control_group.command("status")
@control_options
def control_status(**options) -> None:
    """Print the champion and challenger versions and their metrics."""
    _send("status", **options)


# ----------------------------------------------------------------------------- worker topics
# Self-contained: Kafka imports stay inside the command so `worker --help` stays fast.


@cli.group("topics")
def topics_group() -> None:
    """Manage the worker's Kafka topics."""


@topics_group.command("create")
@click.option(
    "--bootstrap",
    envvar="WORKER_BOOTSTRAP",
    default="127.0.0.1:9092",
    show_default=True,
    help="Kafka bootstrap servers, host:port[,host:port…].",
)
@click.option(
    "--topic-prefix",
    envvar="WORKER_TOPIC_PREFIX",
    default="",
    show_default=True,
    help="Prepended verbatim to every topic name (e.g. 'shop.' → shop.events).",
)
@click.option(
    "--partitions",
    envvar="WORKER_PARTITIONS",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Partitions of events, labels, predictions and events.dlq (control, models, worker-state: 1).",
)
@click.option(
    "--replication-factor",
    envvar="WORKER_REPLICATION_FACTOR",
    type=int,
    default=-1,
    show_default=True,
    help="Replicas per partition; -1 = the broker's default.replication.factor.",
)
@click.option(
    "--kafka-config",
    "kafka_config",
    envvar="WORKER_KAFKA_CONFIG",
    multiple=True,
    metavar="KEY=VALUE",
    help="librdkafka setting passed through (SASL, TLS …); repeatable. In the env: space-separated.",
)
def topics_create(
    bootstrap: str, topic_prefix: str, partitions: int, replication_factor: int, kafka_config: tuple[str, ...]
) -> None:
    """Create every topic of the worker (idempotent: existing topics are reported as such)."""
    from worker.io.topics import create_topics
    from worker.settings import KafkaSettings, parse_kafka_config

    settings = KafkaSettings(
        bootstrap=bootstrap,
        group="worker",  # unused by the admin client; KafkaSettings needs one
        topic_prefix=topic_prefix,
        extra=parse_kafka_config(kafka_config),
    )
    result = create_topics(
        settings.admin_config(), settings.topics, partitions, replication_factor=replication_factor
    )
    for name, status in result.items():
        click.echo(f"{status:<8} {name}")


def main() -> None:
    """Entry point: a `WorkerError` becomes one clear line and an exit code (2 = bad config)."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except ConfigError as e:
        click.echo(f"worker: configuration error: {e}", err=True)
        sys.exit(2)
    except WorkerError as e:
        click.echo(f"worker: {e}", err=True)
        sys.exit(1)
