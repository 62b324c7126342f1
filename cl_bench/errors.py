"""Exceptions for user mistakes.

Every error a user can cause by a config value, a file or a diverging run derives from
:class:`ClBenchError`. The CLI catches these and prints their message alone (no traceback),
exiting with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ClBenchError(Exception):
    """Base class of every error caused by user input (config, data, run state)."""


class ConfigError(ClBenchError):
    """A config value is missing, of the wrong type or out of range.

    The message names the config key, e.g. ``strategy.rank: expected an int > 0, got -4 (int)``.
    """


class DataError(ClBenchError):
    """A data path is missing or empty, a file is corrupt, or a layout is not the expected one.

    The message names the config key or the file and describes the expected layout.
    """


class TrainingError(ClBenchError):
    """Training diverged (NaN/inf loss) or cannot proceed; names the task and the step."""


class RunDirBusy(ClBenchError):
    """Another live clbench holds the run directory's lock (:mod:`cl_bench.lock`); names its host
    and PID. The directory's files are that run's, not this one's."""


class Interrupted(ClBenchError):
    """The run was stopped by Ctrl-C (SIGINT) or SIGTERM. Everything finished so far is on disk:
    the rows of R, the last task-boundary ``state.pt`` and the task's last mid-task checkpoint;
    the message says where it will continue and the ``clbench resume=<run dir>`` command.

    Attributes:
        exit_code: 130 after SIGINT, 143 after SIGTERM (the shell's 128 + signal number).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class StorageError(ClBenchError):
    """A result or checkpoint file could not be written (disk full, file-size limit, no
    permission). Names the file; its previous version is unchanged (every file is written to a
    temporary name and renamed over the old one only when complete)."""
