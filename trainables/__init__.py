"""Trainables: LIC backbones, AuxT, data, losses, the training engine and the Ray Tune trainable."""
