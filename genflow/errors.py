"""User-facing errors.

A `GenflowError` is a problem with what the user gave us (a missing file, a corrupt shard, an unknown
config key, a wrong shape). The CLI prints its message as one line and exits non-zero; any other
exception is a bug and gets a traceback.
"""

__all__ = ["GenflowError", "ConfigError", "ShardError", "DataSourceError", "CheckpointError", "PREEMPTED_EXIT_CODE"]

# EX_TEMPFAIL: a run (or sweep) stopped on request with last.pt written; the same command continues it
PREEMPTED_EXIT_CODE = 75


class GenflowError(Exception):
    """An error in user input, reported as one clear line naming the file/key and what was expected."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(GenflowError):
    """Unknown key, wrong type or invalid value in a config file or a dotted override."""


class ShardError(GenflowError):
    """A shard directory, manifest or HDF5 shard that is missing, corrupt or of the wrong layout."""


class DataSourceError(GenflowError):
    """Raw source data (MNIST files, npz directories, ...) that cannot be found or read."""


class CheckpointError(GenflowError):
    """A run directory or checkpoint that is missing or cannot be loaded."""
