"""The exceptions l2bn raises.

Every :class:`L2bnError` is a problem with what the user asked for (bad input, a missing
folder, an unreachable database): the CLI prints its message as one line on stderr and exits
with code 2. Anything else is a bug and exits with code 1.
"""


class L2bnError(Exception):
    """Base class: a user-facing error whose message says what is wrong and how to fix it."""


class ConfigError(L2bnError):
    """An invalid setting: a bad number, an unknown choice, a malformed sweep file."""


class DataError(L2bnError):
    """A data set that is missing, corrupt, or not what it claims to be."""


class StorageError(L2bnError):
    """An Optuna storage that cannot be opened, reached or written."""


class AnalysisError(L2bnError):
    """Studies that cannot be analyzed as asked (empty, one λ value, missing attributes)."""
