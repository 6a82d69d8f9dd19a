"""The data pipeline: training-file index, deterministic batches with crop schedules, evaluation images."""
