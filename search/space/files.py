"""The pydantic models of a space file's top level (``trial`` stays a plain template here)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from search.experiment.store import NAME_RULE, name_problem
from search.space.sections import SchedulerConfig, SearchAlgorithmConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourcesConfig(_Strict):
    """What one trial holds while it runs."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial (data loading).")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial; fractions pack small trials on one GPU.")
    max_failures: int = Field(2, ge=0, description="Retries of a crashed trial from its last checkpoint.")
    workers_per_trial: int = Field(1, ge=1, description="Data-parallel workers per trial (Ray Train, PyTorch DDP); "
                                   "cpus_per_trial and gpus_per_trial are the trial's totals, split evenly over them.")


class SettleConfig(_Strict):
    """When a fine-tune has settled: its rate and R-D loss stopped moving (the fine-tune's budget is then a cap)."""

    tolerance: float = Field(..., gt=0, lt=100, description="Percent: a fine-tune ends once eval/bpp and "
                             "eval/rd_loss of its last `evaluations` evaluations all lie within this of the latest.")
    evaluations: int = Field(3, ge=2, description="How many consecutive evaluations (every schedule.eval_every "
                             "iterations) must agree; the fine-tune budget must allow at least this many.")


class LadderConfig(_Strict):
    """A rate ladder: each rate family's start point first, the other rate points fine-tuned from its weights."""

    start: dict[str, Any] = Field(..., min_length=1, description="The start point: the rate point trained from "
                                  "scratch, per rate family: every rate key that varies with its value, e.g. "
                                  "{loss.lmbda: 0.0483}.")
    fine_tune: dict[str, Any] = Field(default_factory=dict, description="Dotted trial keys set for every other "
                                      "rate point, e.g. {schedule.iterations: 200000, schedule.lr: 5.0e-5}.")
    settle: Optional[SettleConfig] = Field(None, description="End each fine-tune once its rate has settled "
                                           "(schedule.iterations of fine_tune is then its cap); null: fixed length.")


class SpaceFile(_Strict):
    """A search-space file (the YAML's top level)."""

    name: str = Field(..., description=f"Search name: MLflow experiment and results folder ({NAME_RULE}).")
    description: str = Field("", description="Free text; presets state their GPU budget here.")
    trial: dict[str, Any] = Field(..., description="Trial config template (trainables.config.TrialConfig); any "
                                  "value may be a sampling primitive.")
    search: SearchAlgorithmConfig = Field(default_factory=SearchAlgorithmConfig,
                                          description="Search algorithm settings.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Trial scheduler settings.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Per-trial resources.")
    ladder: Optional[LadderConfig] = Field(None, description="Train the rate points as a ladder: start points "
                                           "from scratch, every other rate point fine-tuned from its family's "
                                           "start point.")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

