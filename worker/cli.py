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
