"""lic-search: Ray Tune searches over learned image compression, recorded in MLflow."""

__version__ = "0.1.0"
