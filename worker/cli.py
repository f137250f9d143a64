"""The `worker` command line: the only place that reads the environment and files.

Every option is also settable as a `WORKER_*` environment variable (click's
`auto_envvar_prefix`) and, for commands that take `--config`, in a TOML file; the CLI
turns all of that into frozen settings objects and hands them to the components.
"""

from __future__ import annotations

import sys

import click

from worker import __version__
from worker.errors import ConfigError, WorkerError


@click.group(context_settings={"auto_envvar_prefix": "WORKER", "help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="worker")
def cli() -> None:
    """Champion/challenger online learning on Kafka."""


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
