"""Exceptions raised by pyro_ssvi."""


class SSVIError(Exception):
    """Base class of all pyro_ssvi errors.

    Pyro re-raises a ValueError or RuntimeError from inside a traced model or guide as a new
    exception of the same class whose message has the trace's shape table appended; pyro_ssvi's
    messages already name the problem, so that table is cut off (one line stays one line).
    """

    def __init__(self, *args) -> None:
        if args and isinstance(args[0], str) and "\nTrace Shapes:" in args[0]:
            args = (args[0].split("\nTrace Shapes:", 1)[0], *args[1:])
        super().__init__(*args)


class SSVIConfigError(SSVIError, ValueError):
    """A bad argument or configuration value."""


class NonFiniteLossError(SSVIError, FloatingPointError):
    """The loss became NaN or infinite; raised before any parameter or mask changes."""


class NonFiniteOutputError(SSVIError, FloatingPointError):
    """A model's likelihood parameters (its outputs) are NaN or infinite at prediction time."""


class SSVIDataError(SSVIError, RuntimeError):
    """A data set is corrupt or not in the expected layout."""


class SSVIDataNotFoundError(SSVIDataError, FileNotFoundError):
    """A data file or folder does not exist; the message names the path and the expected layout."""


class SSVICheckpointError(SSVIError, RuntimeError):
    """A checkpoint file is missing, truncated, foreign or from an incompatible version; the message names the path."""


class SSVIWriteError(SSVIError, OSError):
    """A result file could not be written (a full disk, no permission); its previous version is intact."""


class SSVIDistributedError(SSVIError, RuntimeError):
    """Distributed training went out of step: a rank died or timed out, or the ranks' parameters or masks differ."""
