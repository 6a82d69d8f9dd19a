"""Trial resources: threads from the CPUs Ray grants, GPU memory capped for fractional GPUs."""

import torch

from trainables.training.trainable import apply_resource_limits, gpu_memory_fraction, threads_for


def test_threads_follow_the_cpus_granted():
    assert threads_for({"CPU": 4.0}) == 4
    assert threads_for({"CPU": 0.5}) == 1
    assert threads_for({}) == 1


def test_fractional_gpu_trials_are_capped_to_their_share():
    assert gpu_memory_fraction({"CPU": 1, "GPU": 0.25}) == 0.25
    assert gpu_memory_fraction({"CPU": 1, "GPU": 1.0}) is None
    assert gpu_memory_fraction({"CPU": 1}) is None


def test_apply_resource_limits_sets_threads_and_caps_only_a_fractional_gpu(monkeypatch):
    """The trainable's entry call: torch threads = granted CPUs; the GPU memory cap is set only
    for a fractional GPU on a machine with CUDA (the cap call is recorded, not made)."""
    capped: list[float] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, *_: capped.append(fraction))
    apply_resource_limits({"CPU": 2.0, "GPU": 0.25})
    assert torch.get_num_threads() == 2 and capped == [0.25]
    apply_resource_limits({"CPU": 1.0, "GPU": 1.0})  # a whole GPU: no cap
    assert torch.get_num_threads() == 1 and capped == [0.25]
    apply_resource_limits({"CPU": 0.5})  # half a CPU still gets one thread; no GPU: no cap
    assert torch.get_num_threads() == 1 and capped == [0.25]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    apply_resource_limits({"CPU": 2.0, "GPU": 0.5})  # no CUDA here: nothing to cap
    assert torch.get_num_threads() == 2 and capped == [0.25]
