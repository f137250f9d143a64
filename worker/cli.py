"""The `worker` command line: the only place that reads the environment and files.

Every option is also settable as a `WORKER_*` environment variable (click's
`auto_envvar_prefix`) and, for commands that take `--config`, in a TOML file; the CLI
turns all of that into frozen settings objects and hands them to the components.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import socket
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
                 help="TOML file: an [engine] table (and [engine.promotion]); `worker run` reads [run] too."),
    click.option("--champion", envvar="WORKER_CHAMPION", help="Model spec of version 1."),
    click.option("--challenger", envvar="WORKER_CHALLENGER",
                 help="Model spec of fresh challengers (default: the champion's)."),
    click.option("--challenger-init", envvar="WORKER_CHALLENGER_INIT", type=click.Choice(["fresh", "copy"]),
                 help="New challengers: untrained from the spec, or a trained copy of the champion "
                      "(default: copy; fresh with --challenger or --champion-learns)."),
    click.option("--policy", envvar="WORKER_POLICY", type=click.Choice(["auto", "manual"]),
                 help="auto: the engine promotes and rolls back; manual: operators only."),
    click.option("--champion-learns/--champion-frozen", "champion_learns", default=None,
                 envvar="WORKER_CHAMPION_LEARNS", help="Keep the champion learning after the warm-up."),
    click.option("--warmup-labels", envvar="WORKER_WARMUP_LABELS", type=click.IntRange(min=1),
                 help="Labelled events version 1 learns from before the first challenger [500]."),
]


def _with(options, command):
    """Apply click options in the order they are listed (the order --help shows)."""
    for option in reversed(options):
        command = option(command)
    return command


def engine_options(command):
    return _with(ENGINE_OPTIONS, command)


def load_document(config_path: str | None) -> dict:
    """The TOML file's tables ({} without a file); only [engine] and [run] are known."""
    from worker.core.config import check_keys
    from worker.settings import load_toml

    if not config_path:
        return {}
    document = load_toml(Path(config_path))
    check_keys(document, {"engine", "run"}, f"the top level of {config_path}")
    tables = {f"[{name}]": document[name] for name in ("engine", "run") if name in document}
    if isinstance(document.get("run"), dict) and "kafka" in document["run"]:
        tables["[run.kafka]"] = document["run"]["kafka"]
    for where, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where} in {config_path} must be a table of settings, "
                              f"got {type(table).__name__}")
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
    from worker.io.files import count_lines, read_records
    from worker.runtime.replay import replay

    engine = Engine(engine_config(config_path, **engine_flags))
    warnings: list[str] = []
    records = read_records(file, target=target, id_column=id_column, drop=drop, positive=positive,
                           warnings=warnings)
    with click.progressbar(length=count_lines(file), label=f"replay {file.name}", file=sys.stderr) as bar:
        summary = replay(records, engine, out_dir, timeline_every=timeline_every,
                         on_record=lambda: bar.update(1))
    brief = {k: v for k, v in summary.items() if k not in ("models", "bad_examples", "pending")}
    click.echo(json.dumps(brief, indent=2))
    click.echo(f"outputs: {out_dir}/summary.json, lifecycle.jsonl, timeline.jsonl")
    if summary["bad"]:
        first = summary["bad_examples"][0]
        warnings.append(f"{summary['bad']} bad rows, counted and skipped (the first: line {first['line']}: "
                        f"{first['reason']}); see summary.json")
    if summary["learn_errors"]:
        warnings.append(f"{summary['learn_errors']} times a model could not learn a labelled event (last: "
                        f"{summary['learn_error']}); labels and features must be what the model takes: "
                        "labels true / false for a binary classifier (a CSV's --positive VALUE maps that "
                        "value to true), numbers for a model that computes with them (strings need a spec "
                        "that encodes them: see the README)")
    if summary["shadow_errors"]:
        warnings.append(f"{summary['shadow_errors']} times the challenger or previous champion could not "
                        f"score an event (last: {summary['shadow_error']}); the champion served it: does "
                        "--challenger take the events' features?")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


# ------------------------------------------------------------------------------- worker run

RUN_KEYS = {"bootstrap", "group", "topic_prefix", "guarantee", "commit_interval_ms", "snapshot_interval_s",
            "transaction_timeout_ms", "metrics_port", "secret", "require_signed_commands",
            "command_max_age_s", "state_dir",
            "max_batch", "fresh", "status_interval_s", "commit_interval_events", "snapshot_interval_events",
            "role", "scorer_id", "models_retain", "previous_secrets", "kafka", "log_level"}
LOG_LEVELS = ("debug", "info", "warning", "error")


@cli.command("run")
@click.option("--bootstrap", envvar="WORKER_BOOTSTRAP", help="Kafka bootstrap servers [127.0.0.1:9092].")
@click.option("--group", envvar="WORKER_GROUP", help="Group: offsets, transactional.id, one active instance.")
@click.option("--topic-prefix", envvar="WORKER_TOPIC_PREFIX", help="Prefix of every topic name.")
@engine_options
@click.option("--guarantee", envvar="WORKER_GUARANTEE", type=click.Choice(["exactly_once", "at_least_once"]))
@click.option("--commit-interval-ms", envvar="WORKER_COMMIT_INTERVAL_MS", type=click.IntRange(min=1),
              help="One transaction per interval [100].")
@click.option("--commit-interval-events", envvar="WORKER_COMMIT_INTERVAL_EVENTS", type=click.IntRange(min=0),
              help="Also commit after this many input messages; 0: by time only [0].")
@click.option("--transaction-timeout-ms", envvar="WORKER_TRANSACTION_TIMEOUT_MS",
              type=click.IntRange(min=1000),
              help="Kafka's transaction.timeout.ms; at most the broker's transaction.max.timeout.ms [60000].")
@click.option("--max-batch", envvar="WORKER_MAX_BATCH", type=click.IntRange(min=1),
              help="Input messages consumed at most per poll [500].")
@click.option("--snapshot-interval-s", envvar="WORKER_SNAPSHOT_INTERVAL_S", type=click.FloatRange(min=0.01),
              help="A signed engine snapshot per interval [10].")
@click.option("--snapshot-interval-events", envvar="WORKER_SNAPSHOT_INTERVAL_EVENTS",
              type=click.IntRange(min=0), help="Also snapshot after this many events; 0: by time only [0].")
@click.option("--status-interval-s", envvar="WORKER_STATUS_INTERVAL_S", type=click.FloatRange(min=0),
              help="A status_report on control per interval (and one at start); 0: none periodic [60].")
@click.option("--metrics-port", envvar="WORKER_METRICS_PORT", type=click.IntRange(0, 65535),
              help="Serve /metrics, /healthz and /readyz on this port.")
@click.option("--secret", envvar="WORKER_SECRET", help="Signs snapshots and the worker's commands.")
@click.option("--previous-secret", "previous_secrets", envvar="WORKER_PREVIOUS_SECRETS", multiple=True,
              help="A secret before a rotation: what it signed is still accepted; repeatable.")
@click.option("--require-signed-commands/--accept-unsigned-commands", default=None,
              envvar="WORKER_REQUIRE_SIGNED_COMMANDS",
              help="Reject control commands without a valid signature.")
@click.option("--command-max-age-s", envvar="WORKER_COMMAND_MAX_AGE_S", type=click.FloatRange(min=0),
              help="With signed commands required: refuse one the broker logged longer than this "
                   "after its signed ts (a copy written again); 0: no check [300].")
@click.option("--fresh", is_flag=True, default=None, envvar="WORKER_FRESH",
              help="Ignore the stored state; start from scratch.")
@click.option("--state-dir", envvar="WORKER_STATE_DIR", help="at_least_once: folder of the snapshot file.")
@click.option("--kafka-config", "kafka_config", envvar="WORKER_KAFKA_CONFIG", multiple=True,
              metavar="KEY=VALUE", help="librdkafka setting passed through (SASL, TLS …); repeatable.")
@click.option("--role", envvar="WORKER_ROLE", type=click.Choice(["all", "trainer", "scorer"]),
              help="all: one process does everything; trainer + scorers: scale-out [all].")
@click.option("--scorer-id", envvar="WORKER_SCORER_ID",
              help="--role scorer: a stable name per scorer (its transactional.id) [the host name].")
@click.option("--models-retain", envvar="WORKER_MODELS_RETAIN", type=click.IntRange(min=0),
              help="Versions kept on the models topic: the latest champions (and a trainer's "
                   "challenger under a split); older ones are pruned, never the serving one; 0: all [100].")
@click.option("--log-level", envvar="WORKER_LOG_LEVEL", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="[info]")
def run_command(config_path, kafka_config, log_level, previous_secrets, **options) -> None:
    """Serve, evaluate, train and decide on Kafka: the main job."""
    from worker.obs import logs
    from worker.runtime.worker import Worker

    logs.setup(log_level or _run_log_level(config_path))
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack
    flags = {key: options.pop(key) for key in RUN_KEYS if key in options}  # the rest: the engine's
    flags["previous_secrets"] = list(previous_secrets) or None
    engine_flags = options
    settings = run_settings(config_path, flags, kafka_config)
    if settings.role == "scorer":
        from worker.runtime.scorer import Scorer

        worker = Scorer(settings)
    else:
        worker = Worker(settings, engine_config(config_path, **engine_flags))
    if settings.metrics_port is not None:
        from worker.obs.server import serve

        worker.observer = serve(worker, settings.metrics_port, serves=settings.role != "trainer")
    worker.run()


def _run_log_level(config_path: str | None) -> str:
    """``log_level`` of the TOML [run] table (the flag and WORKER_LOG_LEVEL win), else info."""
    level = load_document(config_path).get("run", {}).get("log_level", "info")
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level


def run_settings(config_path: str | None, flags: dict, kafka_config: tuple[str, ...]):
    """TOML [run] table, overridden by the flags, → a frozen RunSettings."""
    from worker.runtime.run_settings import RunSettings
    from worker.settings import KafkaSettings, parse_kafka_config

    values = run_table(config_path)
    values.pop("log_level", None)  # read by run_command, before anything logs
    values.update({k: v for k, v in flags.items() if v is not None})
    values.setdefault("scorer_id", socket.gethostname())
    extra = {**values.pop("kafka", {}), **parse_kafka_config(kafka_config)}
    kafka = KafkaSettings(
        bootstrap=values.pop("bootstrap", DEFAULT_BOOTSTRAP), group=values.pop("group", "worker"),
        topic_prefix=values.pop("topic_prefix", ""), extra=extra,
        **{k: values.pop(k) for k in ("guarantee", "commit_interval_ms", "snapshot_interval_s",
                                      "transaction_timeout_ms") if k in values},
    )
    secret = values.pop("secret", None)
    previous = values.pop("previous_secrets", [])
    if not isinstance(previous, list) or not all(isinstance(p, str) for p in previous):
        raise ConfigError(f"previous_secrets must be a list of strings, got {previous!r}")
    state_dir = values.pop("state_dir", None)
    return RunSettings(kafka=kafka, secret=(secret or "").encode(),
                       previous_secrets=tuple(p.encode() for p in previous),
                       **({"state_dir": Path(state_dir)} if state_dir else {}), **values)


# --------------------------------------------------------------------------- worker control


DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
CONFIG_OPTION = click.option(
    "--config", "config_path", envvar="WORKER_CONFIG", type=click.Path(dir_okay=False),
    help="The deployment's TOML file: the bootstrap, topic_prefix, kafka settings (and secret) of its "
         "[run] table apply unless given as flags.")
KAFKA_CONFIG_OPTION = click.option(
    "--kafka-config", "kafka_config", envvar="WORKER_KAFKA_CONFIG", multiple=True, metavar="KEY=VALUE",
    help="librdkafka setting passed through (SASL, TLS …); repeatable. In the env: space-separated.")
CONNECTION_OPTIONS = [  # a client of a deployment's topics: control, models, topics create, simulate
    CONFIG_OPTION,
    click.option("--bootstrap", envvar="WORKER_BOOTSTRAP",
                 help=f"Kafka bootstrap servers, host:port[,host:port…]  [default: {DEFAULT_BOOTSTRAP}]"),
    click.option("--topic-prefix", envvar="WORKER_TOPIC_PREFIX",
                 help="Prepended verbatim to every topic name (e.g. 'shop.' → shop.events)."),
    KAFKA_CONFIG_OPTION,
]


def connection_options(command):
    return _with(CONNECTION_OPTIONS, command)


def connection(config_path: str | None, bootstrap: str | None, topic_prefix: str | None,
               kafka_config: tuple[str, ...], group: str):
    """The deployment's Kafka settings for a client command: flags (and WORKER_* variables)
    win over the [run] table of ``--config``, the same file `worker run` reads, so an
    operator's tools need no copy of its SASL/TLS settings."""
    from worker.settings import KafkaSettings, parse_kafka_config

    run = run_table(config_path)
    return KafkaSettings(
        bootstrap=bootstrap or run.get("bootstrap", DEFAULT_BOOTSTRAP), group=group,
        topic_prefix=topic_prefix if topic_prefix is not None else run.get("topic_prefix", ""),
        extra={**run.get("kafka", {}), **parse_kafka_config(kafka_config)},
    )


def run_table(config_path: str | None) -> dict:
    """The [run] table of the TOML file, its keys checked ({} without a file)."""
    from worker.core.config import check_keys

    values = dict(load_document(config_path).get("run", {}))
    check_keys(values, RUN_KEYS, "[run]")
    return values


def file_secret(config_path: str | None, secret: str | None) -> str | None:
    """``--secret``, else the [run] table's."""
    return secret or run_table(config_path).get("secret")


def control_options(command):
    return _with([
        *CONNECTION_OPTIONS,
        click.option("--secret", envvar="WORKER_SECRET", help="Sign the command with this secret."),
        click.option("--expected-champion", type=int, help="Reject unless this version is the champion."),
        click.option("--reason", default="", help="Why (kept in the control log)."),
        click.option("--issued-by", envvar=["WORKER_ISSUED_BY", "USER"], default="operator",
                     help="Who sends it, kept in the control log [WORKER_ISSUED_BY, else $USER, else "
                          "operator]."),
        click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=30.0, show_default=True,
                     help="Seconds to wait for the worker's answer (exit 1 without one). An unreachable "
                          "broker or a missing control topic: exit 2 within WAIT seconds, at least 3, "
                          "at most 8."),
        click.option("--command-id", help="Send again a command that got no answer, by the id it printed: "
                     "the worker applies an id once, and an answer already given is printed."),
    ], command)


@cli.group("control")
def control_group() -> None:
    """Send a command on the control topic and print the worker's answer (exit 1 if rejected)."""


def _send(kind: str, config_path, bootstrap, topic_prefix, secret, expected_champion, reason, issued_by,
          wait_s, command_id, kafka_config, **fields) -> None:
    import time
    import uuid

    from worker.core.types import Command
    from worker.io.control import send_and_wait

    settings = connection(config_path, bootstrap, topic_prefix, kafka_config, "worker-control")
    secret = file_secret(config_path, secret)
    command = Command(type=kind, command_id=command_id or str(uuid.uuid4()), issued_by=issued_by,
                      reason=reason, expected_champion=expected_champion, ts=time.time(), **fields)
    answers = send_and_wait(settings.admin_config(), settings.topics.control, command,
                            secret.encode() if secret else None, wait_s, again=command_id is not None)
    if answers is None:
        note = ("the command stays on control and is applied when the worker reads it; to send it again, "
                f"not twice: --command-id {command.command_id}")
        error = (f"no answer within {wait_s:g}s: is a worker running on {settings.topics.control} "
                 f"at {settings.bootstrap}?")
        click.echo(json.dumps({"command_id": command.command_id, "error": error, "note": note}))
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
@connection_options
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
def topics_create(config_path: str | None, bootstrap: str | None, topic_prefix: str | None, partitions: int,
                  replication_factor: int, kafka_config: tuple[str, ...]) -> None:
    """Create every topic of the worker (idempotent: existing topics are reported as such)."""
    from worker.io.topics import create_topics

    settings = connection(config_path, bootstrap, topic_prefix, kafka_config, "worker")  # group unused
    result = create_topics(
        settings.admin_config(), settings.topics, partitions, replication_factor=replication_factor
    )
    for name, status in result.items():
        click.echo(f"{status:<8} {name}")


# ---------------------------------------------------------------------------- worker models


def _read_models(config_path, bootstrap, topic_prefix, kafka_config, *, chunks_of=None):
    from worker.io.models import read_models
    from worker.io.topics import require_topics

    settings = connection(config_path, bootstrap, topic_prefix, kafka_config, "worker-models-cli")
    topic = settings.topics.models
    require_topics(settings.admin_config(), [topic])
    return read_models({**settings.admin_config(), "group.id": "worker-models-cli"}, topic,
                       chunks_of=chunks_of)


@cli.group("models")
def models_group() -> None:
    """Read the champions the worker published on the models topic."""


@models_group.command("list")
@connection_options
def models_list(config_path, bootstrap, topic_prefix, kafka_config) -> None:
    """Print the lineage of every version on the topic (the worker prunes all but the
    last --models-retain), one JSON object per line."""
    catalog = _read_models(config_path, bootstrap, topic_prefix, kafka_config, chunks_of=())
    for manifest in catalog.manifests():
        click.echo(json.dumps(manifest))


@models_group.command("export")
@connection_options
@click.argument("version", type=click.IntRange(min=1))
@click.option("--secret", envvar="WORKER_SECRET",
              help="The worker's secret (required, here or in --config): the model's signature is checked "
                   "before it is unpickled.")
@click.option("--previous-secret", "previous_secrets", envvar="WORKER_PREVIOUS_SECRETS", multiple=True,
              help="A secret before a rotation (models it signed are accepted); repeatable.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the river model here as a plain pickle (`pickle.load` gives it back).")
def models_export(config_path, bootstrap, topic_prefix, kafka_config, version: int, secret: str | None,
                  previous_secrets: tuple[str, ...], out: Path) -> None:
    """Write VERSION's river model to a pickle file; exit 1 if it is not published."""
    import pickle

    secret = file_secret(config_path, secret)
    if not secret:
        raise click.UsageError("give the worker's --secret (or a --config file whose [run] table has it)")
    catalog = _read_models(config_path, bootstrap, topic_prefix, kafka_config, chunks_of=(version,))
    model = catalog.load(version, [s.encode() for s in (secret, *previous_secrets)])
    out.write_bytes(pickle.dumps(model, protocol=5))
    click.echo(json.dumps({"version": version, "model": repr(model), "out": str(out)}))


# --------------------------------------------------------------------------- worker simulate
# Self-contained: the stream is built by worker.io.simulate (pure), then produced to Kafka.


@cli.command("simulate")
@connection_options
@click.option("--generator", default="sea", show_default=True,
              type=click.Choice(["sea", "agrawal", "hyperplane", "sine", "stagger", "mixed"]),
              help="river synthetic generator (river.datasets.synth).")
@click.option("--file", "file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Send the rows of this CSV (with --target) or JSONL file instead of a generator.")
@click.option("--target", help="CSV: the label column.")
@click.option("--positive", help="CSV: the label value that means true (binary labels), e.g. UP.")
@click.option("--id-column", help="CSV: the column holding the event id (default: --id-prefix + index).")
@click.option("--drop-column", "drop", multiple=True, help="CSV: a column to ignore; repeatable.")
@click.option("--events", type=click.IntRange(min=0),
              help="Events to send; 0 = endless (a file: all its rows)  [default: a generator 10000, "
                   "a file all its rows]")
@click.option("--concepts", default="0,1", show_default=True,
              help="Generator variants of the successive concepts (SEA 0-3, Agrawal 0-9 …), cycled.")
@click.option("--drift-at", "drift_at", multiple=True, metavar="INDEX|SHARE",
              help="Event where the next concept starts: 20000, or a share of --events (0.5, 50%); "
                   "repeatable.")
@click.option("--drift-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Then a drift every N events (endless streams); 0 = none.")
@click.option("--drift-width", type=click.IntRange(min=0), default=0, show_default=True,
              help="0 = abrupt drift; N = gradual over about N events (sigmoid, as ConceptDriftStream).")
@click.option("--noise", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Generator noise (SEA noise, Agrawal perturbation, Hyperplane noise share).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of data, keys and drift.")
@click.option("--entities", type=click.IntRange(min=0), default=100, show_default=True,
              help="Message keys user-0 … user-(N-1), drawn at random; 0 = no key.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second; 0 = as fast as possible.")
@click.option("--labels", "labels_mode", type=click.Choice(["inline", "topic", "none"]), default="inline",
              show_default=True, help="Label in the event, on the labels topic (delayed), or none.")
@click.option("--label-delay", type=click.IntRange(min=0), default=0, show_default=True,
              help="--labels topic: send an event's label after N more events.")
@click.option("--id-prefix", help="Event ids are PREFIX<index> [evt-<random>-].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def simulate_command(config_path, bootstrap, topic_prefix, kafka_config, generator, file, target, positive,
                     id_column, drop, events, concepts, drift_at, drift_every, drift_width, noise, seed,
                     entities, rate, labels_mode, label_delay, id_prefix, progress) -> None:
    """Produce a drifting event stream (and its labels) to Kafka; prints what was sent as JSON.

    Ctrl-C (or SIGTERM) stops cleanly: what was handed to the producer is flushed and
    the counts of acknowledged events and labels are printed. Exit 1 if any send failed.
    """
    import time
    import uuid

    from worker.io import simulate as sim
    from worker.io.files import count_lines, is_csv
    from worker.io.topics import require_topics

    settings = connection(config_path, bootstrap, topic_prefix, kafka_config, "worker-simulate")
    topics = settings.topics
    prefix = sim.check_id_prefix(id_prefix if id_prefix is not None else f"evt-{uuid.uuid4().hex[:6]}-")
    notes: list[str] = []  # what the file reader has to say once it has read the file
    if events is None:
        events = 0 if file is not None else 10_000
    if file is not None:
        if drift_at or drift_every or drift_width:
            raise click.UsageError("--drift-* options apply to generators; a file drifts by itself")
        source = sim.from_file(file, target=target, positive=positive, id_column=id_column, drop=drop,
                               notes=notes)
        total = events or max(count_lines(file) - is_csv(file), 0)
        what = file.name
    else:
        try:
            variants = tuple(int(v) for v in concepts.split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated integers, got {concepts!r}",
                                     param_hint="--concepts") from None
        plan = sim.DriftPlan(concepts=variants, points=sim.parse_points(drift_at, events), every=drift_every,
                             width=drift_width)
        source = sim.synthetic(generator, plan, seed=seed, noise=noise)
        total = events
        what = f"{generator} {concepts}"
    stream = sim.messages(source, events=events, entities=entities, labels=labels_mode,
                          label_delay=label_delay, id_prefix=prefix, seed=seed)
    outputs = [topics.events, *([topics.labels] if labels_mode == "topic" else [])]  # labels is optional
    require_topics(settings.admin_config(), outputs)
    to = " + ".join(outputs)
    pace = f"at {rate:g} events/s" if rate else "as fast as possible"
    click.echo(f"simulate: {what} → {to}, {pace}", err=True)
    with sim.Stop() as stop:
        if progress and total:
            with click.progressbar(length=total, label="events", file=sys.stderr) as bar:
                sent = sim.send(settings.admin_config(), topics.events, topics.labels, stream, rate=rate,
                                stop=stop, on_event=lambda: bar.update(1))
        else:  # endless: a line every 10 s instead of a bar
            ticks = {"n": 0, "at": time.monotonic()}

            def tick() -> None:
                ticks["n"] += 1
                if progress and time.monotonic() - ticks["at"] >= 10:
                    ticks["at"] = time.monotonic()
                    click.echo(f"simulate: {ticks['n']} events sent", err=True)

            sent = sim.send(settings.admin_config(), topics.events, topics.labels, stream, rate=rate,
                            stop=stop, on_event=tick)
    if sent.interrupted:
        click.echo(f"simulate: stopped: sent {sent.events_acked} events and {sent.labels_acked} labels"
                   f" ({sent.failed} failed)", err=True)
    click.echo(json.dumps(sent.as_dict()))
    for note in notes:
        click.echo(f"simulate: warning: {note}", err=True)
    if sent.failed:
        click.echo(f"simulate: {sent.failed} messages failed: {'; '.join(sent.errors)}", err=True)
        sys.exit(1)


# ----------------------------------------------------------------------------- worker report
# Self-contained: reads a replay folder or the control topic, renders worker.obs.report.


@cli.command("report")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--bootstrap", envvar="WORKER_BOOTSTRAP",
              help="Read the control topic of this cluster (when no RUN_DIR is given).")
@click.option("--topic-prefix", envvar="WORKER_TOPIC_PREFIX", help="Prefix of the deployment's topic names.")
@KAFKA_CONFIG_OPTION
@CONFIG_OPTION
@click.option("--ask-status/--no-ask-status", default=True, show_default=True,
              help="Kafka: send a `status` command first, so the report ends with the current state.")
@click.option("--secret", envvar="WORKER_SECRET", help="Kafka: sign that status command with this secret.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=15.0, show_default=True,
              help="Kafka: seconds to wait for the worker's status answer.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("out/report.html"), show_default=True, help="The HTML page to write.")
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG of the accuracy chart [--out with .png].")
@click.option("--title", default="worker report", show_default=True)
def report_command(run_dir, bootstrap, topic_prefix, kafka_config, config_path, ask_status, secret, wait_s,
                   out, png, title) -> None:
    """Write an HTML page (and a PNG) of both models' metrics over time, with drift
    alarms, promotions and rollbacks, and the versions' lineage.

    From RUN_DIR (a `worker replay --out` folder), or from the control topic of a
    deployment (--bootstrap, --topic-prefix): its lifecycle events, and the
    status_report events for the metrics over time (the worker writes one as it starts,
    one per status_interval_s and one per `status` command; --ask-status sends one first).
    """
    from worker.obs import report

    if run_dir is not None:
        data = report.load_replay(run_dir)
    elif bootstrap or config_path:
        import time
        import uuid

        from worker.core.types import Command
        from worker.io.control import send_and_wait

        settings = connection(config_path, bootstrap, topic_prefix, kafka_config, "worker-report")
        secret = file_secret(config_path, secret)
        control = settings.topics.control
        if ask_status:
            command = Command(type="status", command_id=str(uuid.uuid4()), issued_by="worker-report",
                              reason="report", ts=time.time())
            answer = send_and_wait(settings.admin_config(), control, command,
                                   secret.encode() if secret else None, wait_s)
            if answer is None:
                click.echo(f"report: no status answer within {wait_s:g}s (is a worker running?); "
                           "using what is on the control topic", err=True)
            elif answer[-1]["type"] == "command_rejected":
                click.echo(f"report: the status command was rejected ({answer[-1]['detail'].get('reason')}); "
                           "using what is on the control topic", err=True)
        data = report.load_control(report.read_control(settings.admin_config(), control),
                                   source=f"control topic {control} at {settings.bootstrap}")
    else:
        raise click.UsageError("give a `worker replay --out` folder, or --bootstrap to read the control "
                               "topic")
    png_path = report.write_report(data, out, title=title, png=png)
    s = data.summary
    click.echo(f"report: {len(data.points)} points, {len(data.markers)} markers, {len(data.versions)} "
               f"versions, promotions {s.get('promotions')}, rollbacks {s.get('rollbacks')}", err=True)
    click.echo(f"html: {out}")
    click.echo(f"png: {png_path}")


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
        sys.exit(e.exit_code)
    except OSError as e:  # a path that cannot be read or written (a file where a folder should be …)
        if e.filename is None:
            raise
        why = ("a part of that path is a file, not a folder"
               if isinstance(e, NotADirectoryError | FileExistsError) else e.strerror)
        click.echo(f"worker: {e.filename}: {why}", err=True)
        sys.exit(1)
