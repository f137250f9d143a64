"""One root error for everything the worker raises on purpose.

Callers catch `WorkerError` at the edge (the CLI turns it into one line and an exit
code); the subclasses say which part of the system refused.
"""


class WorkerError(Exception):
    """Root of every error the worker raises deliberately."""

    exit_code = 1  # of the CLI


class ConfigError(WorkerError):
    """Bad configuration: unknown key, invalid value, missing topic. CLI exit code 2."""

    exit_code = 2


class BrokerLost(WorkerError):
    """The broker went away while a command waited on it (not a configuration error, but
    exit code 2 all the same: the outcome is unknown, as with an unreachable broker)."""

    exit_code = 2


class SpecError(ConfigError):
    """A model or detector spec that the safe parser refuses."""


class SnapshotError(WorkerError):
    """A snapshot that is unsigned, tampered with, foreign or unreadable."""


class SignatureError(SnapshotError):
    """A snapshot or model signed with another secret (or tampered with after signing)."""


class Fenced(WorkerError):
    """A newer instance with the same ``transactional.id`` took over: stop (exit 1)."""


class StoppedUncommitted(WorkerError):
    """Told to stop while the broker was unreachable: the worker exits (1) without its
    last commit rather than wait for a broker that may never come back. Nothing is lost:
    the next start resumes from the last commit and processes that input again."""

    def __init__(self, what: str = "the next start processes that input again") -> None:
        super().__init__(f"stopped without committing the last interval: the broker is unreachable. "
                         f"Nothing is lost: {what}")


class BadInputError(WorkerError):
    """An input message that cannot be processed; it goes to the dead-letter topic."""


class InvalidCommandError(BadInputError):
    """A control command with a usable ``command_id`` but an invalid field or type: it is
    dead-lettered like any bad input, and answered with ``command_rejected`` too, so that
    whoever sent it does not wait for an answer that never comes."""

    def __init__(self, reason: str, command_id: str, command_type: str, issued_by: str) -> None:
        super().__init__(reason)
        self.command_id = command_id
        self.command_type = command_type
        self.issued_by = issued_by


class RefusedInputError(BadInputError):
    """An input the engine itself refused (the champion raised on it, its id is pending); the
    engine has counted it. Any other `BadInputError` is input the edge could not decode."""


class CommandRejected(WorkerError):
    """A control command that is invalid or stale; answered with `command_rejected`."""


class DuplicateIdError(BadInputError):
    """An event (or label) whose ``id`` is still pending: refused, dead-lettered."""
