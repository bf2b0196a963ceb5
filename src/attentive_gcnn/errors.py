"""Errors that are the user's to fix: the entrypoints print them as one short message and exit non-zero."""


class UserError(Exception):
    """Bad input (data, options, paths): reported without a traceback."""


class ConfigError(UserError):
    """Options that are invalid or incompatible, caught before any training starts."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class DiskFullError(UserError):
    """A write failed for lack of space; the file it would have replaced is intact."""
