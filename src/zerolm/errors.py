"""Exceptions with messages a user can act on."""


class ZeroLMError(Exception):
    """Base class: an error the CLI reports as one clear line, without a traceback."""


class ConfigError(ZeroLMError):
    """A config file or override is invalid."""


class DataError(ZeroLMError):
    """Input data is missing, empty, undecodable or malformed (the message names file:line)."""


class CheckpointError(ZeroLMError):
    """A checkpoint is missing, incomplete or does not fit the model."""


class TrainingError(ZeroLMError):
    """Training cannot go on (for example the loss became NaN or inf)."""
