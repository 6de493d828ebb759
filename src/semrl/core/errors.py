"""semrl's error types. The CLI turns each into a one-paragraph message and exit code 2."""


class SemrlError(Exception):
    """Base class of errors caused by the user's input or environment, not by a bug."""

    exit_code = 2


class ConfigError(SemrlError):
    """The experiment config is missing, malformed or invalid."""


class DataError(SemrlError):
    """A data file is malformed (the message names the file and line), or data is missing."""


class ModelError(SemrlError):
    """A model or encoder cannot be loaded or cannot do what the config asks of it."""
