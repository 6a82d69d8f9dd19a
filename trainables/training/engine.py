"""The training engine every trial runs: one loop, resumable to the iteration.

Recipe (paper Section 5.1 and the authors' code): Adam on the main parameters with loss
``λ·D + bpp + λ_orth·L_orth`` (Eq. 6); a second Adam on the entropy bottleneck's quantiles
with CompressAI's auxiliary loss; learning-rate decay (:mod:`trainables.training.lr_schedule`: by
``gamma`` at fractions of the budget as in the paper, ×0.1 at 0.55M of 0.6M, 0.9M of 1M, 1.8M
of 2M; or cosine, or on plateau) after an optional linear warm-up; gradient clipping.
Batches are a pure function of ``(seed, iteration)`` and the RNG states (and the plateau
state) are checkpointed, so a restored trial continues exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from trainables import batch_noise
from trainables import metrics as M
from trainables.config import TrialConfig
from trainables.device import resolve_device
from trainables.errors import TrainingDivergedError
from trainables.training import data_parallel
from trainables.training.checkpoint import capture_rng_state, restore_rng_state
from trainables.shard import Shard
from trainables.training.lr_schedule import LrSchedule, lr_factor  # noqa: F401  (lr_factor: the engine's API before)

# On GPU the NaN/Inf check syncs with the host only this often (and at every evaluation).
FINITE_CHECK_EVERY = 50


def keep_entropy_models_in_fp32(model: torch.nn.Module, device_type: str) -> int:
    """Run every CompressAI entropy model outside autocast, on fp32 inputs.

    Likelihoods are products of CDF differences and quantile offsets; in bf16/fp16 they lose
    the precision the rate term needs, so only the transforms run in reduced precision.
    Returns how many entropy models were wrapped.
    """
    from compressai.entropy_models import EntropyModel

    wrapped = 0
    for module in model.modules():
        if isinstance(module, EntropyModel) and not getattr(module, "_lic_fp32", False):
            inner = module.forward

            def forward(*args, _inner=inner, **kwargs):
                args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
                kwargs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                          for k, v in kwargs.items()}
                with torch.autocast(device_type, enabled=False):
                    return _inner(*args, **kwargs)

            module.forward = forward
            module._lic_fp32 = True
            wrapped += 1
    return wrapped


@dataclass
class _TrainStats:
    """Sums of the loss terms since the last evaluation, kept on the device (no sync per step)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    steps: int = 0

    def add(self, terms: dict[str, Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {name: float(total) / max(self.steps, 1) for name, total in self.sums.items()}

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed, so a trial resumed between evaluations reports the same train/* means."""
        return {"sums": {name: float(total) for name, total in self.sums.items()}, "steps": self.steps}

    @classmethod
    def from_state(cls, state: Optional[dict[str, Any]], device: torch.device) -> "_TrainStats":
        if not state:
            return cls()
        return cls({name: torch.tensor(value, device=device) for name, value in state["sums"].items()},
                   int(state["steps"]))


class Trainer:
    """Owns model, optimizers, schedule and RNG for one trial (or for one rank of a data-parallel trial:
    ``shard``, see :mod:`trainables.training.data_parallel`)."""

    def __init__(self, config: TrialConfig, device: Optional[torch.device] = None, warm_start: bool = True,
                 shard: Optional[Shard] = None):
        """``warm_start=False``: skip ``model.init_from`` (a resumed trial loads its own checkpoint instead)."""
        from trainables.losses import RateDistortionLoss
        from trainables.model import create_model
        from trainables.training.warm_start import apply_warm_start

        self.config = config
        self.device = device or resolve_device(config.performance.device)
        self.shard = shard or Shard()
        perf = config.performance
        if self.device.type == "cuda" and perf.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(config.schedule.seed)
        model = create_model(config.model)
        self.warm_start = apply_warm_start(model, config.model) if warm_start else None  # weights only
        self.model = model.to(self.device)
        if perf.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        trained: torch.nn.Module = self.model
        if self.shard.distributed:
            data_parallel.shard_quantization_noise(self.model)
            trained = data_parallel.wrap(self.model, self.device)
        self.forward = torch.compile(trained) if perf.compile else trained
        schedule = config.schedule
        self.optimizer = torch.optim.Adam(self.model.main_parameters(), lr=schedule.lr)
        self.aux_optimizer = torch.optim.Adam(self.model.aux_parameters(), lr=schedule.aux_lr)
        self.lr_schedule = LrSchedule(schedule)  # step / cosine / plateau (plateau state checkpointed)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: self.lr_schedule.factor(it)
        )
        self.criterion = RateDistortionLoss(config.loss.distortion, config.loss.lmbda)
        self.iteration = 0
        self._stats = _TrainStats()  # loss sums since the last evaluation
        self._eval_images: Optional[list] = None
        self._first_bad: Optional[Tensor] = None
        self._first_bad_values: Optional[Tensor] = None
        self._term_names: list[str] = []
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(perf.amp)
        # fp16 autocast is a CUDA feature; bf16 also runs (slowly, but testably) on CPU.
        self.autocast_dtype = amp if (self.device.type == "cuda" or amp == torch.bfloat16) else None
        if self.autocast_dtype is not None:
            keep_entropy_models_in_fp32(self.model, self.device.type)
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=perf.amp == "fp16" and self.device.type == "cuda")

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "rng": capture_rng_state(),
            "iteration": self.iteration,
            "train_stats": self._stats.state_dict(),
            "config": self.config.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "lr_schedule" in state:  # checkpoints before plateau decay have no schedule state
            self.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        restore_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self._stats = _TrainStats.from_state(state.get("train_stats"), self.device)
        # The config wins over the checkpoint for the learning rates: PBT restores a clone's
        # weights with its own, perturbed schedule. Same config -> the same LRs as before.
        schedule = self.config.schedule
        self.scheduler.base_lrs = [schedule.lr] * len(self.optimizer.param_groups)
        factor = self.lr_schedule.factor(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = schedule.lr
            group["lr"] = schedule.lr * factor
        for group in self.aux_optimizer.param_groups:
            group["lr"] = schedule.aux_lr

    # ------------------------------------------------------------------ loop
    def _step(self, batch: Tensor) -> dict[str, Tensor]:
        config = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None), \
                batch_noise.global_batch(self.shard.rank, self.shard.world_size):
            out = self.forward(batch)
        # Likelihoods and the R-D loss are computed in fp32 even under autocast.
        out = {**out, "x_hat": out["x_hat"].float(),
               "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}
        rd = self.criterion(out, batch)
        ortho = self.model.ortho_loss()
        total = rd["loss"] + config.model.auxt.lambda_orth * ortho
        self.grad_scaler.scale(total).backward()
        if config.schedule.clip_grad_norm:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.main_parameters(), config.schedule.clip_grad_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.scheduler.step()
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_optimizer.step()
        return {
            M.TRAIN_LOSS: total, M.TRAIN_RD_LOSS: rd["loss"], M.TRAIN_BPP: rd["bpp"],
            M.TRAIN_DISTORTION: rd["distortion"], M.TRAIN_ORTHO_LOSS: ortho, M.TRAIN_AUX_LOSS: aux,
        }

    def _watch_finite(self, terms: dict[str, Tensor], iteration: int) -> None:
        """Remember the first iteration with a NaN/Inf loss term, without a host sync."""
        values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
            self._first_bad_values = torch.zeros_like(values)
        newly_bad = (~torch.isfinite(values).all()) & (self._first_bad < 0)
        self._first_bad = torch.where(newly_bad, torch.full_like(self._first_bad, iteration), self._first_bad)
        self._first_bad_values = torch.where(newly_bad, values, self._first_bad_values)
        self._term_names = list(terms)

    def _raise_if_diverged(self) -> None:
        """One host sync: checked every step on CPU, every ``FINITE_CHECK_EVERY`` steps on GPU
        (data-parallel: one reduction, so every rank stops at the same iteration)."""
        first_bad = -1 if self._first_bad is None else int(self._first_bad)
        if self.shard.distributed:
            first_bad = data_parallel.earliest_over_ranks(first_bad, self.device)
        if first_bad < 0:
            return
        if self._first_bad is None or int(self._first_bad) != first_bad:  # another rank's share went bad
            raise TrainingDivergedError(f"non-finite loss at iteration {first_bad} (on another worker)")
        values = self._first_bad_values.tolist()
        shown = ", ".join(f"{name}={value:g}" for name, value in zip(self._term_names, values)
                          if not math.isfinite(value))
        raise TrainingDivergedError(f"non-finite loss at iteration {int(self._first_bad)}: {shown}")

    def train(self, checkpoint_due: Optional[Callable[[], Optional[str]]] = None) -> Iterator[dict[str, Any]]:
        """Train to the budget, yielding the metrics of each evaluation (every ``eval_every``).

        Between evaluations, whenever ``checkpoint_due()`` names a reason (the checkpoint clock,
        SIGTERM), it yields ``{iterations, notice: reason}`` so the caller can checkpoint there."""
        from trainables.data.images import make_train_loader

        schedule = self.config.schedule
        if self.iteration >= schedule.iterations:
            return
        loader = make_train_loader(self.config.data, seed=schedule.seed, start_iteration=self.iteration,
                                   device_type=self.device.type, iterations=schedule.iterations, shard=self.shard)
        timed, started = 0, time.perf_counter()  # steps and time of this process (for iters_per_s)
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            if self.config.performance.channels_last and self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            terms = self._step(batch)
            self.iteration += 1
            self._watch_finite(terms, self.iteration)
            self._stats.add(terms)
            timed += 1
            evaluate = self.iteration % schedule.eval_every == 0 or self.iteration >= schedule.iterations
            if evaluate or self.device.type != "cuda" or self.iteration % FINITE_CHECK_EVERY == 0:
                self._raise_if_diverged()
            if evaluate:
                elapsed = time.perf_counter() - started
                result = {f"{k}": v for k, v in self._stats.means().items()}
                if self.shard.distributed:  # each rank's means are of its share: their mean is the batch's
                    result = data_parallel.mean_over_ranks(result, self.device)
                result[M.TRAIN_LR] = self.optimizer.param_groups[0]["lr"]
                result[M.TRAIN_ITERS_PER_S] = timed / max(elapsed, 1e-9)
                result.update(self._evaluate_once())
                if self.lr_schedule.observe(result[M.EVAL_RD_LOSS]):  # plateau decayed: from the next step on
                    for group in self.optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * self.lr_schedule.factor(self.scheduler.last_epoch)
                result[M.ITERATIONS] = self.iteration
                if self.shard.distributed:  # the files every rank found unreadable, not rank 0's alone
                    loader.broken.update(data_parallel.union_over_ranks(loader.broken))
                result.update(loader.data_metrics())  # training images listed / skipped
                self._stats = _TrainStats()  # before the yield: the checkpoint taken there starts a new interval
                yield result
                timed, started = 0, time.perf_counter()
            elif checkpoint_due is not None and (reason := checkpoint_due()) is not None:
                self._raise_if_diverged()  # never checkpoint a non-finite state
                yield {M.ITERATIONS: self.iteration, M.NOTICE: reason}
            if self.iteration >= schedule.iterations:
                return

    # ------------------------------------------------------------ evaluation
    def _evaluate_once(self) -> dict[str, float]:
        """:meth:`evaluate` on rank 0 only, its result on every rank."""
        if not self.shard.distributed:
            return self.evaluate()
        return data_parallel.from_rank0(self.evaluate() if self.shard.rank == 0 else None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """R-D metrics on the held-out images: whole images padded, metrics on the unpadded area; the means,
        and each image's values under :data:`~trainables.metrics.EVAL_IMAGES` (a JSON table)."""
        from trainables.data.images import crop_to, load_eval_images, pad_to_multiple
        from trainables.losses import bpp as bits_per_pixel
        from trainables.losses import (
            branch_energy_share,
            ms_ssim,
            psnr,
            rd_loss_value,
            top_channel_energy_share,
        )

        if self._eval_images is None:
            self._eval_images = load_eval_images(self.config.data)
        self.model.eval()
        totals: dict[str, float] = {}
        count = 0
        loss = self.config.loss
        per_image = M.PerImage()
        for name, image in self._eval_images:
            x = image.to(self.device)
            padded, size = pad_to_multiple(x, self.model.pad_multiple)
            out = self.model(padded)
            x_hat = crop_to(out["x_hat"], size).clamp(0, 1)
            mse = float(torch.mean((x_hat - x) ** 2))
            values = {
                M.EVAL_BPP: float(bits_per_pixel(out["likelihoods"], size[0] * size[1])),
                M.EVAL_MSE: mse,
                M.EVAL_PSNR: psnr(x_hat, x),
                M.EVAL_TOP10_ENERGY: top_channel_energy_share(out["y"]),
            }
            quality = ms_ssim(x_hat, x)
            if quality is not None:
                values[M.EVAL_MS_SSIM] = quality
            if out.get("y_auxt") is not None:
                values[M.EVAL_AUXT_ENERGY] = branch_energy_share(out["y"], out["y_auxt"])
            steps = self.model.decode_steps(*padded.shape[-2:])
            if steps is not None:
                values[M.EVAL_DECODE_STEPS] = float(steps)
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            count += 1
            per_image.add(name, bpp=values[M.EVAL_BPP], psnr=values[M.EVAL_PSNR], mse=mse, ms_ssim=quality,
                          rd_loss=rd_loss_value(loss.distortion, loss.lmbda, values[M.EVAL_BPP], mse=mse,
                                                ms_ssim=quality))
        result = {name: total / count for name, total in totals.items()}
        result[M.EVAL_RD_LOSS] = rd_loss_value(loss.distortion, loss.lmbda, result[M.EVAL_BPP],
                                               mse=result[M.EVAL_MSE], ms_ssim=result.get(M.EVAL_MS_SSIM))
        result[M.EVAL_ORTHO_LOSS] = float(self.model.ortho_loss())
        result[M.EVAL_IMAGES] = per_image.to_json()  # each image's values: intervals over images (search.bootstrap)
        return result
