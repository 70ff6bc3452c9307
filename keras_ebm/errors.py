"""Errors that stop a command with a message instead of a traceback."""


class ConfigError(ValueError):
    """An invalid config value, or a resource that does not fit the config;
    the message names the field and says what to do."""


class DatasetNotFoundError(RuntimeError):
    """A dataset is not on disk; the message says how to get it."""


class WriteError(RuntimeError):
    """A file could not be written (disk full, quota, I/O error); the
    message names the file, the cause and what is still intact."""


class CheckpointError(RuntimeError):
    """A run directory holds checkpoints, none of them verified (damaged,
    or with neither a manifest nor a record inside); the message says
    what to do."""


class Diverged(RuntimeError):
    """Training stopped by the divergence guard (`keras_ebm.runs.guard`)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command after saving its state.

    A `KeyboardInterrupt`, so that library users see what Ctrl-C always
    raises; the commands print its one-line message and exit with
    `128 + signum`, the shell's convention for a signal.
    """

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
