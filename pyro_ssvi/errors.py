"""Exceptions raised by pyro_ssvi."""


class SSVIError(Exception):
    """Base class of all pyro_ssvi errors."""


class SSVIConfigError(SSVIError, ValueError):
    """A bad argument or configuration value."""


class NonFiniteLossError(SSVIError, FloatingPointError):
    """The loss became NaN or infinite; raised before any parameter or mask changes."""


class SSVIDataError(SSVIError, RuntimeError):
    """A data set is corrupt or not in the expected layout."""


class SSVIDataNotFoundError(SSVIDataError, FileNotFoundError):
    """A data file or folder does not exist; the message names the path and the expected layout."""


class SSVICheckpointError(SSVIError, RuntimeError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version; the message names the path."""
