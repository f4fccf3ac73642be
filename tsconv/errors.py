"""User-facing errors. The CLI prints `error: <message>` on one line and exits with `exit_code`.

Exit codes: 2 for bad input (arguments, data, config, checkpoint), 1 for the environment
(network, disk), 130 for Ctrl-C.
"""

from __future__ import annotations


class TsconvError(Exception):
    exit_code = 1


class UsageError(TsconvError):
    """The command line asks for something that cannot be done: a missing option, a folder
    that is not a run, a resume that does not match the interrupted run."""

    exit_code = 2


class FolderError(UsageError):
    """A run folder cannot be used as asked: another run is writing into it, it holds a run
    that a new one would replace, or a file --resume would keep is not the one the run wrote.
    A sweep stops on it rather than count the trial as failed."""


class DataError(TsconvError):
    """A data file or frame is unusable; the message names the file, row and problem."""

    exit_code = 2


class ConfigError(TsconvError):
    """A config key is unknown, mistyped or out of range; the message names the key path."""

    exit_code = 2


class CheckpointError(TsconvError):
    """A model.pt is corrupt or does not match the config it is used with."""

    exit_code = 2


class TrainingError(TsconvError):
    """Training could not continue (e.g. the loss became NaN)."""

    exit_code = 2


class FetchError(TsconvError):
    """Downloading failed (offline, rate-limited, unknown symbol)."""

    exit_code = 1


class OutputError(TsconvError):
    """An output could not be written (read-only folder, disk full)."""

    exit_code = 1
