"""Errors a user can fix: each message says what is wrong and where (file, column, field)."""


class TrainerError(Exception):
    """A problem with the run's input (data, model, settings); the message is shown to the user as is."""


class DataError(TrainerError):
    """The dataset cannot be used: the message names the file, split or column."""


class ConfigError(TrainerError):
    """The spec asks for something this machine or model cannot do."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; the next start resumes from it."""

    exit_code = 143
