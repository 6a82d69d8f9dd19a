"""Typed configuration of one trial.

A trial's config is the single source of truth for what gets trained: the search space
(`search.space`) samples plain values into this shape, the trainable validates it with
these models, and the resolved config is saved with every trial and logged to MLflow.
Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back to a
default (the timm ``set_defaults(**yaml)`` trap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Paper Section 4.1: s_ll, s_lh, s_hl, s_hh initialised to (1, 0.5, 0.5, 0); the authors'
# released code uses (0.5, 0.5, 0.5, 0).
SCALING_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "paper": (1.0, 0.5, 0.5, 0.0),
    "official": (0.5, 0.5, 0.5, 0.0),
}

# Paper Section 5.1: the six λ of each rate family.
MSE_LAMBDAS = (0.0025, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)
MS_SSIM_LAMBDAS = (2.40, 4.58, 8.73, 16.64, 31.73, 60.50)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class AuxTConfig(_Strict):
    """The auxiliary transform (AuxT, ICLR 2025) and every knob its ablations vary."""

    enabled: bool = False
    placement: Literal["both", "analysis", "synthesis", "none"] = Field(
        "both", description="Where WLS (analysis) / iWLS (synthesis) shortcuts are added."
    )
    stages: Optional[list[int]] = Field(
        None, description="0-based downsampling stages that get a shortcut; null = all."
    )
    wavelet: str = Field("haar", description="PyWavelets orthogonal/biorthogonal basis name.")
    scaling_init: Union[Literal["paper", "official"], tuple[float, float, float, float]] = Field(
        "paper", description="Initial (LL, LH, HL, HH) log-scales s; the scale is exp(s)."
    )
    lambda_orth: float = Field(0.1, ge=0.0, description="Weight of the OLP orthogonality loss (Eq. 5); 0 disables it.")
    ortho_norm: Literal["mean", "frobenius"] = Field(
        "mean",
        description="Per-OLP scale of ||WᵀW−I||²: mean of squared entries (authors' code, the "
        "scale λ_orth=0.1 was tuned at) or the squared Frobenius norm (Eq. 5 as written).",
    )
    # Ablations (Figure 8 and Appendix A.2)
    projection: Literal["orthogonal", "unconstrained"] = Field(
        "orthogonal", description="A1: 'unconstrained' drops the orthogonality penalty."
    )
    scaling: bool = Field(True, description="A2: false removes the subband-aware scaling.")
    downsample: Literal["dwt", "avgpool", "strided_conv"] = Field(
        "dwt", description="A3 avgpool / A4 strided_conv replace the DWT (scaling is removed too)."
    )
    nonlinearity: Literal["none", "relu", "gdn"] = Field(
        "none", description="Figure 8d: a nonlinearity after each OLP."
    )
    replace_resampling: bool = Field(
        False, description="Appendix A.2: WLS/iWLS replace the backbone's down/upsampling layers."
    )

    @field_validator("wavelet")
    @classmethod
    def _known_wavelet(cls, name: str) -> str:
        import pywt

        allowed = pywt.wavelist(kind="discrete")
        if name not in allowed:
            raise ValueError(f"unknown wavelet {name!r}; allowed: discrete PyWavelets bases such as "
                             "haar, db2, db4, sym4, coif1, bior2.2")
        wavelet = pywt.Wavelet(name)
        if not (wavelet.orthogonal or wavelet.biorthogonal):
            raise ValueError(f"wavelet {name!r} is neither orthogonal nor biorthogonal")
        return name

    @property
    def scaling_values(self) -> tuple[float, float, float, float]:
        if isinstance(self.scaling_init, str):
            return SCALING_PRESETS[self.scaling_init]
        return tuple(float(v) for v in self.scaling_init)  # type: ignore[return-value]

    @property
    def in_analysis(self) -> bool:
        return self.enabled and self.placement in ("both", "analysis")

    @property
    def in_synthesis(self) -> bool:
        return self.enabled and self.placement in ("both", "synthesis")

    def inactive_knobs(self) -> frozenset[str]:
        """The knobs that change nothing in the model this config builds (see :func:`inactive_auxt_knobs`)."""
        return inactive_auxt_knobs(self.model_dump(mode="json"))


def inactive_auxt_knobs(values: dict[str, Any]) -> frozenset[str]:
    """AuxT knobs (field names) that do nothing given the others; ``values`` are AuxTConfig fields,
    a field left out at its default.

    What the model builder does (trainables.auxt): nothing at all when AuxT is off or placed
    nowhere; no wavelet and no subband scaling when the DWT is replaced (A3 avgpool, A4 strided
    conv); no scaling init without scaling; no orthogonality penalty with an unconstrained
    projection (A1) or ``lambda_orth`` 0. Names and families are read from this, so a label
    never claims a part the model does not have.
    """
    fields = AuxTConfig.model_fields
    get = lambda key: values.get(key, fields[key].default)  # noqa: E731
    if not get("enabled") or get("placement") == "none":
        return frozenset(k for k in fields if k != "enabled" and (k != "placement" or not get("enabled")))
    inactive: set[str] = set()
    if get("downsample") != "dwt":
        inactive |= {"wavelet", "scaling", "scaling_init"}
    if not get("scaling"):
        inactive.add("scaling_init")
    if get("projection") == "unconstrained":
        inactive |= {"lambda_orth", "ortho_norm"}
    try:
        if float(get("lambda_orth")) == 0.0:
            inactive.add("ortho_norm")
    except (TypeError, ValueError):
        pass
    return frozenset(inactive)


class LLICConfig(_Strict):
    """Knobs of the llic-style backbone (a reconstruction of LLIC's transforms; read by no other backbone)."""

    kernel_sizes: tuple[int, int, int, int] = Field(
        (11, 11, 9, 9), description="Large depth-wise kernel size K per analysis stage (image side first; "
        "mirrored in the synthesis), odd. Default from a third-party reading of LLIC."
    )
    kernel: Literal["self-conditioned", "static"] = Field(
        "self-conditioned", description="self-conditioned: each sample's kernel = a static kernel + an offset "
        "generated from the block's input (SCST); static: a plain depth-wise convolution."
    )
    channel_factors: bool = Field(True, description="Self-conditioned per-channel factors in the channel "
                                  "blocks (SCCT); false drops them.")

    @field_validator("kernel_sizes")
    @classmethod
    def _odd(cls, sizes: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        bad = [k for k in sizes if k < 1 or k % 2 == 0]
        if bad:
            raise ValueError(f"kernel sizes must be odd and >= 1 (a centred kernel), but got {list(sizes)}")
        return sizes


class MSPConfig(_Strict):
    """Knobs of the msp-style backbone (a progressive sub-lattice entropy model; read by no other backbone)."""

    steps: Literal[1, 2, 4, 8, 16] = Field(
        4, description="Sequential decoding steps of the latent (the profile): 1 = hyperprior only, 2 = "
        "checkerboard, 4 = the stride-2 phases, 8 / 16 = finer; the same for every image size."
    )


#: ModelConfig sections that belong to one backbone each (``BackboneSpec.options`` names one).
BACKBONE_OPTION_SECTIONS: tuple[str, ...] = ("llic", "msp")


class ModelConfig(_Strict):
    backbone: str = Field("mbt2018-mean", description="Registered backbone name (see `lic-search models`).")
    N: Optional[int] = Field(None, gt=0, description="Backbone width N; null = the backbone's default.")
    M: Optional[int] = Field(None, gt=0, description="Latent channels M; null = the backbone's default.")
    auxt: AuxTConfig = Field(default_factory=AuxTConfig)
    init_from: Optional[str] = Field(
        None, description="Start from these weights instead of random ones: a checkpoint folder or state.pt of "
        "this tool, or a CompressAI state dict file (weights only; optimizers, schedule and iteration start fresh).",
    )
    init_from_partial: bool = Field(
        False, description="With init_from: allow adding AuxT to weights trained without it (AuxT's parameters "
        "keep their initialisation).",
    )
    llic: LLICConfig = Field(default_factory=LLICConfig)
    msp: MSPConfig = Field(default_factory=MSPConfig)


CROP_MIN = 16  # smallest training crop (data.crop_size and every crop_schedule stage)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class CropStage(_Strict):
    """One stage of ``data.crop_schedule``: from fraction ``at`` of the budget, crops of ``crop``."""

    at: float = Field(..., ge=0.0, lt=1.0, description="Start of the stage, a fraction of schedule.iterations.")
    crop: int = Field(..., ge=CROP_MIN, description="Training crop size of the stage (pixels).")
    batch_size: Optional[int] = Field(None, ge=1, description="Batch size of the stage; null = data.batch_size.")

    @staticmethod
    def normalise(stage: Any) -> Any:
        """``[at, crop]`` / ``[at, crop, batch_size]`` → the mapping form; anything else unchanged."""
        if isinstance(stage, (list, tuple)) and len(stage) in (2, 3):
            return dict(zip(("at", "crop", "batch_size"), stage))
        if isinstance(stage, CropStage):
            return stage.model_dump()
        return stage


class DataConfig(_Strict):
    train: Path = Field(..., description="Folder of training images, searched recursively (ImageNet's "
                        "train/<class>/*.JPEG), or a text file listing image paths (one a line, relative to it).")
    eval: Path = Field(..., description="Folder of held-out evaluation images.")
    crop_size: int = Field(256, ge=CROP_MIN, description="Random training crop size (pixels); with a "
                           "crop_schedule, the first stage's crop.")
    small_images: Literal["pad", "resize"] = Field(
        "pad", description="Images smaller than the crop: reflect-pad or upscale to fit."
    )
    batch_size: int = Field(8, ge=1)
    num_workers: Optional[int] = Field(None, ge=0, description="DataLoader workers; null = automatic.")
    cache: Literal["auto", "always", "never"] = Field(
        "auto", description="Keep decoded images in memory (auto: when the set is small)."
    )
    max_eval_images: Optional[int] = Field(None, ge=1)
    crop_schedule: Optional[list[CropStage]] = Field(
        None, description="Patch-size stages over the budget: [[0.0, 256], [0.8, 512]] trains 256 crops until "
        "80% of the iterations, then 512; a third value per stage sets its batch size "
        "([[0.0, 256, 16], [0.8, 512, 4]]); mapping form {at, crop, batch_size}. null = crop_size throughout.",
    )

    @model_validator(mode="before")
    @classmethod
    def _crop_size_from_schedule(cls, data: Any) -> Any:
        """With a crop_schedule and no crop_size, crop_size is the first stage's crop."""
        if isinstance(data, dict) and data.get("crop_schedule") and "crop_size" not in data:
            first = CropStage.normalise(data["crop_schedule"][0]) if isinstance(data["crop_schedule"], list) else None
            if isinstance(first, dict) and isinstance(first.get("crop"), int) and first["crop"] >= CROP_MIN:
                data = {**data, "crop_size": first["crop"]}
        return data

    @field_validator("crop_schedule", mode="before")
    @classmethod
    def _stages(cls, stages: Any, info: ValidationInfo) -> Any:
        if stages is None:
            return None
        if not isinstance(stages, list) or not stages:
            raise ValueError(f"must be a non-empty list of stages [fraction, crop] or [fraction, crop, batch_size], "
                             f"got {stages!r}")
        normalised = [CropStage.normalise(stage) for stage in stages]
        for index, (raw, stage) in enumerate(zip(stages, normalised)):
            if not isinstance(stage, dict):
                raise ValueError(f"stage {index} ({raw!r}): a stage is [fraction, crop], [fraction, crop, batch_size] "
                                 "or a mapping with keys at, crop, batch_size")
            at, crop, batch = stage.get("at"), stage.get("crop"), stage.get("batch_size")
            if not _is_number(at) or not 0.0 <= at < 1.0:
                raise ValueError(f"stage {index} ({raw!r}): its start {at!r} must be a fraction of the budget in [0, 1)")
            if not isinstance(crop, int) or isinstance(crop, bool) or crop < CROP_MIN:
                raise ValueError(f"stage {index} ({raw!r}): crop {crop!r} must be an integer >= {CROP_MIN} "
                                 "(the limit of data.crop_size)")
            if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
                raise ValueError(f"stage {index} ({raw!r}): batch_size {batch!r} must be an integer >= 1")
        starts = [stage["at"] for stage in normalised]
        if starts[0] != 0.0:
            raise ValueError(f"the first stage must start at 0.0 (the start of training), got {starts[0]}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"stage start fractions must increase, got {starts}")
        crop_size = info.data.get("crop_size")
        if crop_size is not None and crop_size != normalised[0]["crop"]:
            raise ValueError(f"the first stage's crop ({normalised[0]['crop']}) differs from data.crop_size "
                             f"({crop_size}); with a crop_schedule, crop_size is the first stage's crop: leave "
                             "crop_size out or make the two equal")
        return normalised

    def stage_crops(self) -> list[int]:
        """Every crop size training uses: the stages' crops, or crop_size alone."""
        return [stage.crop for stage in self.crop_schedule] if self.crop_schedule else [self.crop_size]


class LossConfig(_Strict):
    distortion: Literal["mse", "ms-ssim"] = "mse"
    lmbda: float = Field(0.0130, gt=0.0, description="R-D trade-off λ (paper's MSE set 0.0025-0.0483).")


PLATEAU_PATIENCE = 4  # schedule.patience with decay plateau when left out (STF's ReduceLROnPlateau setting)


class ScheduleConfig(_Strict):
    """Learning-rate schedule of a trial: linear warm-up, then one decay shape (`decay`).

    Keys that only one decay reads are errors with the others (``patience`` only with plateau,
    ``milestones`` only with step, ``min_lr`` not with step, a non-default ``gamma`` not with
    cosine), so a space never carries a knob its trials ignore. The factors are computed in
    :mod:`trainables.training.lr_schedule`.
    """

    iterations: int = Field(..., ge=1, description="Iteration budget of the trial.")
    eval_every: int = Field(100, ge=1, description="Evaluate (and checkpoint) every K iterations.")
    checkpoint_minutes: float = Field(
        30.0, ge=0.0, description="Also checkpoint at least this often between evaluations (a preemption or a "
        "lost node then costs at most this much work); 0 = only at evaluations. SIGTERM always checkpoints.")
    lr: float = Field(1e-4, gt=0.0)
    aux_lr: float = Field(1e-3, gt=0.0, description="Entropy-bottleneck quantile optimizer learning rate.")
    decay: Literal["step", "cosine", "plateau"] = Field(
        "step", description="step: lr x gamma at each milestone; cosine: from lr after warm-up down to min_lr "
        "at the end of the budget; plateau: lr x gamma after `patience` evaluations without a lower "
        "eval/rd_loss, not below min_lr.",
    )
    milestones: list[float] = Field(
        default_factory=list, description="decay step: fractions of the budget where lr is multiplied by `gamma`."
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay step and plateau: the decay factor.")
    min_lr: Optional[float] = Field(
        None, ge=0.0, validate_default=True,
        description="decay cosine and plateau: the lowest lr (null = 0); not with step.",
    )
    patience: Optional[int] = Field(
        None, ge=1, validate_default=True,
        description=f"decay plateau: evaluations without improvement before lr x gamma (null = {PLATEAU_PATIENCE}); "
        "only with plateau.",
    )
    warmup: int = Field(0, ge=0, description="Linear warm-up iterations.")
    clip_grad_norm: Optional[float] = Field(1.0, gt=0.0)
    seed: int = 0

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, values: list[float], info: ValidationInfo) -> list[float]:
        for v in values:
            if not 0.0 < v < 1.0:
                raise ValueError(f"milestones are fractions of the budget in (0, 1), got {v}")
        if list(values) != sorted(values):
            raise ValueError(f"milestones must be increasing, got {values}")
        decay = info.data.get("decay")
        if values and decay not in (None, "step"):
            raise ValueError(f"only decay step has milestones, but decay is {decay!r} ({_DECAY_SHAPES[decay]}); "
                             "remove milestones or set schedule.decay to step")
        return values

    @field_validator("gamma")
    @classmethod
    def _gamma_used(cls, gamma: float, info: ValidationInfo) -> float:
        decay = info.data.get("decay")
        if decay == "cosine" and gamma != cls.model_fields["gamma"].default:
            raise ValueError(f"decay cosine has no gamma ({_DECAY_SHAPES['cosine']}); remove gamma, or use "
                             "decay step or plateau")
        return gamma

    @field_validator("min_lr")
    @classmethod
    def _min_lr_used(cls, min_lr: Optional[float], info: ValidationInfo) -> Optional[float]:
        decay, lr = info.data.get("decay"), info.data.get("lr")
        if decay == "step":
            if min_lr is not None:
                raise ValueError("only decay cosine and plateau have min_lr, but decay is 'step' "
                                 f"({_DECAY_SHAPES['step']}); remove min_lr or set schedule.decay to cosine or plateau")
            return None
        if decay is None:
            return min_lr
        min_lr = 0.0 if min_lr is None else min_lr
        if lr is not None and min_lr >= lr:
            raise ValueError(f"must be below schedule.lr ({lr:g}), got {min_lr:g}")
        return min_lr

    @field_validator("patience")
    @classmethod
    def _patience_used(cls, patience: Optional[int], info: ValidationInfo) -> Optional[int]:
        decay = info.data.get("decay")
        if decay == "plateau":
            return PLATEAU_PATIENCE if patience is None else patience
        if patience is not None and decay is not None:
            raise ValueError(f"only decay plateau has patience, but decay is {decay!r} ({_DECAY_SHAPES[decay]}); "
                             "remove patience or set schedule.decay to plateau")
        return patience

    @model_validator(mode="after")
    def _eval_within_budget(self) -> "ScheduleConfig":
        if self.eval_every > self.iterations:
            self.eval_every = self.iterations
        return self


_DECAY_SHAPES = {
    "step": "lr x gamma at each milestone",
    "cosine": "lr follows a half cosine down to min_lr",
    "plateau": "lr x gamma when eval/rd_loss stops improving",
}


class PerformanceConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    tf32: bool = True


class TrialConfig(_Strict):
    """Everything one trial needs; the trainable receives it as a nested dict."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    loss: LossConfig = Field(default_factory=LossConfig)
    schedule: ScheduleConfig
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)


def flatten(config: dict, prefix: str = "", separator: str = ".") -> dict[str, object]:
    """Dotted-key view of a nested config (``model.auxt.lambda_orth``), as MLflow params.

    ``separator="/"`` gives Ray Tune's spelling of the same keys (``model/auxt/lambda_orth``).
    """
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + separator, separator))
        else:
            flat[name] = value
    return flat

