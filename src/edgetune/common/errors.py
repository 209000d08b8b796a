"""The one exception type users see: its message is the one-line error the CLI prints."""


class EdgetuneError(Exception):
    """A user-facing error; the CLI prints `edgetune: <message>` and exits non-zero."""


class BundleError(EdgetuneError):
    """A bundle folder is missing, incomplete, or fails its manifest."""


class DataError(EdgetuneError):
    """Training or evaluation data is malformed; the message names FILE:LINE."""


class AdapterError(EdgetuneError):
    """An adapter folder is missing, malformed, or does not fit the bundle."""
