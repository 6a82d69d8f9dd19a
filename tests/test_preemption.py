"""Checkpoints between evaluations (the clock, SIGTERM), resumed exactly; damaged checkpoints skipped
for the newest one that loads, with the damage named."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_trial
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.errors import LicSearchError
from trainables.training import preemption
from trainables.training.checkpoint import MANIFEST_FILE, STATE_FILE, load_checkpoint, save_checkpoint
from trainables.training.engine import Trainer
from trainables.training.trainable import restore


def _config(**overrides) -> TrialConfig:
    return TrialConfig.model_validate(tiny_trial(**{"schedule.iterations": 6, "schedule.eval_every": 6, **overrides}))


def test_a_checkpoint_between_evaluations_resumes_to_the_same_evaluation():
    """A notice checkpoint at iteration 4 of 6: the resumed trial's evaluation at 6 equals the uninterrupted one,
    train/* means included (the loss sums since the last evaluation are in the checkpoint)."""
    straight = list(Trainer(_config()).train())
    assert [r[M.ITERATIONS] for r in straight] == [6]

    first = Trainer(_config())
    notices = []
    for result in first.train(checkpoint_due=lambda: "checkpoint" if first.iteration == 4 else None):
        assert M.NOTICE in result, "the notice comes before the evaluation"
        notices.append(result)
        state = first.state_dict()
        break
    assert notices == [{M.ITERATIONS: 4, M.NOTICE: "checkpoint"}]
    second = Trainer(_config())
    second.load_state_dict(state)
    (resumed,) = list(second.train())
    for key, value in straight[0].items():
        if key != M.TRAIN_ITERS_PER_S:
            assert resumed[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_clock_is_due_every_checkpoint_minutes_and_at_once_after_sigterm():
    now = [0.0]
    clock = preemption.CheckpointClock(0.5, now=lambda: now[0])
    assert clock.due() is None
    now[0] = 29.0
    assert clock.due() is None
    now[0] = 30.0
    assert clock.due() == preemption.CLOCK
    clock.restart()
    assert clock.due() is None
    assert preemption.CheckpointClock(0, now=lambda: now[0] + 1e9).due() is None  # 0: only at evaluations

    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert preemption.install_sigterm_handler()
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread: a request, not an exit
        assert preemption.stop_requested()
        assert clock.due() == preemption.PREEMPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        preemption._requested.clear()


def test_preempted_error_is_a_ray_preemption_that_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(preemption.TrialPreempted("SIGTERM at 4")))
    assert error.preempted and "SIGTERM at 4" in str(error)


def _trial_checkpoints(tmp_path: Path, iterations: list[int]) -> list[Path]:
    """Checkpoints of one trial at these iterations, in a folder laid out like Ray's trial folder."""
    folder = tmp_path / "train_lic_indexed_abc12_00000_0_2026-01-01_00-00-00"
    trainer = Trainer(_config())
    paths = []
    for index, stop_at in enumerate(iterations):
        for _ in trainer.train(checkpoint_due=lambda: "checkpoint" if trainer.iteration == stop_at else None):
            break
        path = folder / f"checkpoint_{index:06d}"
        save_checkpoint(trainer.state_dict(), path)
        paths.append(path)
    return paths


def test_truncated_newest_checkpoint_falls_back_to_the_older_one_and_names_it(tmp_path: Path):
    from ray import tune

    older, newest = _trial_checkpoints(tmp_path, [2, 4])
    assert (newest / MANIFEST_FILE).is_file()
    state = newest / STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a crash mid-copy
    with pytest.raises(LicSearchError, match=r"damaged checkpoint .*checkpoint_000001: state.pt has \d+ bytes"):
        load_checkpoint(newest)

    trainer = Trainer(_config())
    damaged = restore(trainer, tune.Checkpoint(str(newest)), "abc12_00000").damaged
    assert trainer.iteration == 2
    assert len(damaged) == 1 and str(newest) in damaged[0] and "bytes" in damaged[0]


def test_only_ray_s_checkpoint_or_older_ones_of_the_trial_are_tried(tmp_path: Path):
    """A checkpoint newer than Ray's (written while the driver was gone) is not used: its evaluation never reached
    the driver, so the history would miss it. Another trial's checkpoint (a PBT clone) gets no fallback."""
    from ray import tune

    known, newer = _trial_checkpoints(tmp_path, [2, 4])
    trainer = Trainer(_config())
    assert restore(trainer, tune.Checkpoint(str(known)), "abc12_00000").damaged == []
    assert trainer.iteration == 2  # not 4: the newer checkpoint is not the one Ray registered
    (newer / STATE_FILE).write_bytes(b"")
    with pytest.raises(LicSearchError, match="no checkpoint of this trial loads"):  # not its folder: no fallback
        restore(Trainer(_config()), tune.Checkpoint(str(newer)), "zzz99_00001")


def test_no_loadable_checkpoint_fails_naming_every_file(tmp_path: Path):
    from ray import tune

    older, newest = _trial_checkpoints(tmp_path, [2, 4])
    for path in (older, newest):
        with open(path / STATE_FILE, "r+b") as stream:  # same size, other bytes: only the checksum tells
            stream.seek(100)
            stream.write(b"\0" * 16)
    with pytest.raises(LicSearchError, match="no checkpoint of this trial loads") as caught:
        restore(Trainer(_config()), tune.Checkpoint(str(newest)), "abc12_00000")
    assert str(older) in str(caught.value) and str(newest) in str(caught.value)
    assert "SHA-256" in str(caught.value)


def test_checkpoints_written_before_checksums_still_load(tmp_path: Path):
    trainer = Trainer(_config())
    save_checkpoint(trainer.state_dict(), tmp_path)
    (tmp_path / MANIFEST_FILE).unlink()
    assert load_checkpoint(tmp_path)["iteration"] == 0
    assert torch.is_tensor(load_checkpoint(tmp_path)["rng"]["torch"])


def test_a_checkpoint_that_does_not_load_into_the_model_is_damage_too(tmp_path: Path):
    """Checksums fine, but another model's weights (a load_state_dict mismatch): skipped, named with the reason."""
    from ray import tune

    from trainables.training.trainable import restored_notice

    older, newest = _trial_checkpoints(tmp_path, [2, 4])
    other = Trainer(_config(**{"model.N": 16}))
    save_checkpoint(other.state_dict(), newest)  # verifies, but does not fit
    trainer = Trainer(_config())
    restored = restore(trainer, tune.Checkpoint(str(newest)), "abc12_00000")
    assert trainer.iteration == 2 and restored.checkpoint.path == str(older)
    (damaged,) = restored.damaged
    assert damaged.startswith(f"{newest}: RuntimeError: Error(s) in loading state_dict") and "size mismatch" in damaged
    notice = restored_notice(restored, trainer.iteration)
    assert notice[M.NOTICE] == M.NOTICE_RESTORED and notice[M.DAMAGED_CHECKPOINTS] == damaged


def test_a_checkpoint_without_checksums_is_loaded_with_a_note(tmp_path: Path, capsys):
    from ray import tune

    from trainables.training.trainable import restored_notice

    (newest,) = _trial_checkpoints(tmp_path, [4])
    (newest / MANIFEST_FILE).unlink()
    trainer = Trainer(_config())
    restored = restore(trainer, tune.Checkpoint(str(newest)), "abc12_00000")
    assert trainer.iteration == 4 and restored.unverified and restored.damaged == []
    assert f"checkpoint {newest} has no {MANIFEST_FILE}" in capsys.readouterr().out
    notice = restored_notice(restored, 4)
    assert notice[M.UNVERIFIED_CHECKPOINT] == str(newest) and M.DAMAGED_CHECKPOINTS not in notice
    (newest / "checksums.json").write_text("{}")  # verified (nothing recorded to differ): nothing to say
    assert restored_notice(restore(Trainer(_config()), tune.Checkpoint(str(newest)), "abc12_00000"), 4) is None
