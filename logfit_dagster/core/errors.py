"""Errors that name what is wrong: the file, the line, the field."""


class LogfitError(Exception):
    """Base of every error logfit raises on bad input."""


class LogInputError(LogfitError):
    """A log file is missing, empty or unreadable."""


class RegistryError(LogfitError):
    """The source registry is malformed or names an unknown or unsafe source."""


class ChecksumMismatchError(LogfitError):
    """A downloaded file does not match its expected checksum."""


class LabelerError(LogfitError):
    """A labeler is misconfigured (a missing key, an unknown model) or its API refused the work."""


class BudgetExceededError(LabelerError):
    """Labeling would cost more than the run's budget cap; nothing was submitted."""


class ModelFileError(LogfitError):
    """A model file is missing, corrupt, or made for other features."""


class TrainingDataError(LogfitError):
    """The data cannot train a model: one class, too few sessions, no labels."""


class StateFileError(LogfitError):
    """A saved state (a miner's state, a checkpoint, a database) is corrupt or not what it
    should be; the message names the file and what to do."""


class StoredOutputError(LogfitError):
    """An asset's stored output is missing or unreadable; the message names the file."""


class BusyError(LogfitError):
    """Another process holds what this command needs (the data folder of a materialize)."""
