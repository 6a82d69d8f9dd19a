"""The one exception root for user-facing errors (STYLE.md: Optuna's ``OptunaError``).

It lives in ``trainables`` because both packages raise it; ``search.errors`` re-exports it.
Messages state the rule, then the value, and name the file / key path when there is one.
"""


class LicSearchError(Exception):
    """A user-facing error; the CLI prints its message without a traceback and exits 2."""


class DataError(LicSearchError):
    """An image folder is missing, empty or holds no readable image."""


class TrainingDivergedError(LicSearchError):
    """A loss became NaN or Inf; the message says at which iteration and in which term."""
