"""The training loop every trial runs: the engine, its learning-rate schedule, checkpoints, warm starts
(``model.init_from``) and the Ray Tune trainable."""
