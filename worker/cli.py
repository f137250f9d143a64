"""The `worker` command line: the only place that reads the environment and files.

Every option is also settable as a `WORKER_*` environment variable (click's
`auto_envvar_prefix`) and, for commands that take `--config`, in a TOML file; the CLI
turns all of that into frozen settings objects and hands them to the components.
"""

from __future__ import annotations

import json
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


def engine_config(config_path: str | None, **flags):
    """The frozen engine settings from the TOML file and the flags."""
    from worker.core.config import EngineConfig
    from worker.settings import check_keys, load_toml

    values: dict = {}
    if config_path:
        document = load_toml(Path(config_path))
        check_keys(document, {"engine", "run"}, f"the top level of {config_path}")
        values = dict(document.get("engine", {}))
    values.update({k: v for k, v in flags.items() if v is not None})
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


# ----------------------------------------------------------------------------- worker topics
# Self-contained: Kafka imports stay inside the command so `worker --help` stays fast.


@cli.group("topics")
def topics_group() -> None:
    """Manage the worker's Kafka topics."""


@topics_group.command("create")
@click.option(
    "--bootstrap",
    envvar="WORKER_BOOTSTRAP",
    required=True,
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
