"""Every error type edgetune raises, in one place.

`EdgetuneError` and its subclasses are user-facing: bad input, a missing file, an option
out of range. Their message is the one line the CLI prints (`edgetune: <message>`), with
no traceback. `InternalError` is the opposite: a broken invariant inside edgetune, which
the CLI lets through with its traceback, so that it can be reported.
"""


class EdgetuneError(Exception):
    """A user-facing error; the CLI prints `edgetune: <message>` and exits non-zero."""


class ConfigError(EdgetuneError):
    """A configuration field has a value it cannot take; `field` names it (the CLI shows the flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class BundleError(EdgetuneError):
    """A bundle folder is missing, incomplete, or fails its manifest."""


class DataError(EdgetuneError):
    """Training or evaluation data is malformed; the message names FILE:LINE."""


class AdapterError(EdgetuneError):
    """An adapter folder is missing, malformed, or does not fit the bundle."""


class TrainingError(EdgetuneError):
    """Training cannot start or had to stop (bad options, a non-finite loss, a signal)."""


class TrainingCancelledError(TrainingError):
    """Training stopped when asked to (a cancel or a signal), after checkpointing its last step."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class CheckpointError(EdgetuneError):
    """A checkpoint cannot be written, read, or resumed from."""


class OutputError(EdgetuneError):
    """An output (a bundle, a merged model, an adapter, a checkpoint) cannot be written: disk full, read-only, ..."""

    def __init__(self, target, error: OSError | str):
        filename = getattr(error, "filename", None)
        where = f" ({filename})" if filename and str(filename) != str(target) else ""
        self.strerror = getattr(error, "strerror", None) or str(error)
        super().__init__(f"{target}: cannot write: {self.strerror}{where}")


class InternalError(Exception):
    """A bug in edgetune, not bad input: it keeps its traceback (not an EdgetuneError on purpose)."""
