"""The training loop every trial runs: the engine, its learning-rate schedule, checkpoints and the Ray Tune
trainable."""
