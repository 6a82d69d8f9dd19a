"""Data-parallel trials (``resources.workers_per_trial``): the same model for any number of workers.

The engine is run here on two gloo processes without Ray (the Ray Train wiring is covered by the
end-to-end test in tests/test_data_parallel_search.py): after k steps from the same seed, the
2-worker run and the 1-worker run hold the same parameters and report the same losses."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import tiny_trial
from trainables import batch_noise
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.data.images import make_train_loader
from trainables.shard import Shard
from trainables.training.checkpoint import load_checkpoint, save_checkpoint
from trainables.training.engine import Trainer

STEPS = 4
COMPARED = (M.TRAIN_LOSS, M.TRAIN_RD_LOSS, M.TRAIN_BPP, M.TRAIN_AUX_LOSS, M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR)


def _config(**overrides) -> dict:
    return tiny_trial(**{"data.batch_size": 4, "schedule.iterations": STEPS, "schedule.eval_every": 2,
                         "schedule.clip_grad_norm": 1.0, **overrides})


def _train(config: dict, shard: Shard = Shard(), checkpoint: str = "", stop_at: int = 0) -> tuple[list[dict], dict]:
    """Train from scratch, or from ``checkpoint``; with ``stop_at``, rank 0 saves into ``checkpoint`` there."""
    torch.set_num_threads(1)
    trainer = Trainer(TrialConfig.model_validate(config), device=torch.device("cpu"), shard=shard)
    if checkpoint and not stop_at:
        trainer.load_state_dict(load_checkpoint(Path(checkpoint)))
    results = []
    for result in trainer.train():
        results.append(result)
        if result[M.ITERATIONS] == stop_at:
            if shard.rank == 0:
                save_checkpoint(trainer.state_dict(), Path(checkpoint))
            break
    return results, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _rank(rank: int, world: int, port: int, config: dict, out: str, checkpoint: str, stop_at: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # a fresh process's own RNG: training must not depend on it
        results, state = _train(config, Shard(rank, world), checkpoint, stop_at)
        torch.save({"results": results, "state": state}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_on_two_ranks(config: dict, out: Path, checkpoint: str = "", stop_at: int = 0) -> list[dict]:
    out.mkdir(exist_ok=True)
    mp.start_processes(_rank, args=(2, _free_port(), config, str(out), checkpoint, stop_at), nprocs=2,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_each_rank_loads_its_rows_of_the_global_batch():
    config = TrialConfig.model_validate(_config())
    whole = next(make_train_loader(config.data, seed=0, start_iteration=5))
    shares = [next(make_train_loader(config.data, seed=0, start_iteration=5, shard=Shard(r, 2))) for r in range(2)]
    assert [s.shape[0] for s in shares] == [2, 2]
    assert torch.equal(torch.cat(shares), whole)


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="does not split over 2 workers"):
        Shard(0, 2).rows(5)


def test_noise_of_a_sharded_draw_is_the_one_process_draw_split_by_rank():
    torch.manual_seed(3)
    whole = batch_noise.per_sample(torch.empty(4, 3), lambda t: t.uniform_(-0.5, 0.5))
    after_whole = torch.rand(1)
    shares = []
    for rank in range(2):
        torch.manual_seed(3)
        with batch_noise.global_batch(rank, 2):
            shares.append(batch_noise.per_sample(torch.empty(2, 3), lambda t: t.uniform_(-0.5, 0.5)))
        assert torch.equal(torch.rand(1), after_whole)  # the RNG moved on as in one process
    assert torch.equal(torch.cat(shares), whole)


@pytest.mark.slow
def test_two_workers_train_the_model_of_one_worker(tmp_path: Path):
    """AuxT on, gradient clipping on: k steps at batch 4 on one process = k steps of 2 + 2 on two."""
    config = _config()
    single, single_state = _train(config)
    ranks = _train_on_two_ranks(config, tmp_path)
    for rank in ranks:  # every rank ends with the same weights and reports the same (global) numbers
        assert [r[M.ITERATIONS] for r in rank["results"]] == [2, 4]
        for name, value in single_state.items():
            # Adam moves a parameter by about lr whatever its gradient's size, so summation-order rounding in a
            # near-zero gradient can show as a small fraction of lr (1e-3): atol 1e-4.
            torch.testing.assert_close(rank["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)
        for one, two in zip(single, rank["results"]):
            for name in COMPARED:
                assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), name


@pytest.mark.slow
def test_two_workers_resume_exactly_from_rank_0s_checkpoint(tmp_path: Path):
    """A 2-worker trial stopped at iteration 2 and restored (fresh processes) ends as the uninterrupted one."""
    config = _config()
    whole = _train_on_two_ranks(config, tmp_path / "whole")
    (tmp_path / "ckpt").mkdir()
    first = _train_on_two_ranks(config, tmp_path / "first", str(tmp_path / "ckpt"), stop_at=2)
    resumed = _train_on_two_ranks(config, tmp_path / "resumed", str(tmp_path / "ckpt"))
    assert [r[M.ITERATIONS] for r in first[0]["results"]] == [2]
    assert [r[M.ITERATIONS] for r in resumed[0]["results"]] == [4]
    for rank in range(2):
        for name in COMPARED:
            assert resumed[rank]["results"][0][name] == whole[rank]["results"][1][name], name
        for name, value in whole[rank]["state"].items():
            assert torch.equal(resumed[rank]["state"][name], value), name


def _rank_restore(rank: int, world: int, port: int, newest: str, out: str) -> None:
    """Restore as a data-parallel trial's rank does; vote on a checkpoint only rank 1 asks for."""
    import torch.distributed as dist
    from ray import tune

    from trainables.training import data_parallel
    from trainables.training.data_parallel_trainable import _restore

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        trainer = Trainer(TrialConfig.model_validate(tiny_trial(**{"schedule.iterations": 6,
                                                                  "schedule.eval_every": 6})),
                          device=torch.device("cpu"), shard=Shard(rank, world))
        notice = _restore(trainer, tune.Checkpoint(newest), "abc12_00000", Shard(rank, world))
        due = data_parallel.agreed(lambda: "preempted" if rank == 1 else ("checkpoint" if rank == 0 else None),
                                   ("checkpoint", "preempted"))
        merged = data_parallel.union_over_ranks({f"file{rank}": "broken", "shared": f"rank {rank}"})
        torch.save({"iteration": trainer.iteration, "notice": notice, "due": due(), "merged": merged},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_restore_past_a_truncated_checkpoint_and_agree_on_stopping(tmp_path: Path):
    """Rank 0 skips the truncated newest checkpoint for the older one and names it; rank 1 loads the one rank 0
    chose. A SIGTERM on one rank stops both (the strongest reason wins); rank-local findings are merged."""
    from tests.test_preemption import _trial_checkpoints

    older, newest = _trial_checkpoints(tmp_path, [2, 4])
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    mp.start_processes(_rank_restore, args=(2, _free_port(), str(newest), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["iteration"] for r in ranks] == [2, 2]
    assert ranks[0]["notice"][M.NOTICE] == M.NOTICE_RESTORED
    assert ranks[0]["notice"][M.DAMAGED_CHECKPOINTS].startswith(f"{newest}: state.pt has ")
    assert ranks[1]["notice"] is None
    assert [r["due"] for r in ranks] == ["preempted", "preempted"]
    assert ranks[0]["merged"] == ranks[1]["merged"] == {"file0": "broken", "shared": "rank 0", "file1": "broken"}
