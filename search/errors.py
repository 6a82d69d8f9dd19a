"""User-facing errors of the search layer; the root class is shared with ``trainables``."""

from trainables.errors import DataError, LicSearchError, TrainingDivergedError


class SpaceError(LicSearchError):
    """A search-space file is invalid. The message names file, key path, rule and allowed values."""

    def __init__(self, file: str, key_path: str, message: str):
        self.file = file
        self.key_path = key_path
        super().__init__(f"{file}: {key_path or '<root>'}: {message}")


class TrackingError(LicSearchError):
    """The MLflow tracking server cannot be reached or refuses a request."""


__all__ = ["LicSearchError", "DataError", "TrainingDivergedError", "SpaceError", "TrackingError"]
