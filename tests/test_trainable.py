"""Trial resources: threads from the CPUs Ray grants, GPU memory capped for fractional GPUs."""

from trainables.trainable import gpu_memory_fraction, threads_for


def test_threads_follow_the_cpus_granted():
    assert threads_for({"CPU": 4.0}) == 4
    assert threads_for({"CPU": 0.5}) == 1
    assert threads_for({}) == 1


def test_fractional_gpu_trials_are_capped_to_their_share():
    assert gpu_memory_fraction({"CPU": 1, "GPU": 0.25}) == 0.25
    assert gpu_memory_fraction({"CPU": 1, "GPU": 1.0}) is None
    assert gpu_memory_fraction({"CPU": 1}) is None
