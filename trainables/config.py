"""Typed configuration of one trial.

A trial's config is the single source of truth for what gets trained: the search space
(`search.space`) samples plain values into this shape, the trainable validates it with
these models, and the resolved config is saved with every trial and logged to MLflow.
Unknown keys are errors (``extra="forbid"``) so a typo never silently falls back to a
default (the timm ``set_defaults(**yaml)`` trap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


class ModelConfig(_Strict):
    backbone: str = Field("mbt2018-mean", description="Registered backbone name (see `lic-search models`).")
    N: Optional[int] = Field(None, gt=0, description="Backbone width N; null = the backbone's default.")
    M: Optional[int] = Field(None, gt=0, description="Latent channels M; null = the backbone's default.")
    auxt: AuxTConfig = Field(default_factory=AuxTConfig)


class DataConfig(_Strict):
    train: Path = Field(..., description="Folder of training images.")
    eval: Path = Field(..., description="Folder of held-out evaluation images.")
    crop_size: int = Field(256, ge=16, description="Random training crop size (pixels).")
    small_images: Literal["pad", "resize"] = Field(
        "pad", description="Images smaller than the crop: reflect-pad or upscale to fit."
    )
    batch_size: int = Field(8, ge=1)
    num_workers: Optional[int] = Field(None, ge=0, description="DataLoader workers; null = automatic.")
    cache: Literal["auto", "always", "never"] = Field(
        "auto", description="Keep decoded images in memory (auto: when the set is small)."
    )
    max_eval_images: Optional[int] = Field(None, ge=1)


class LossConfig(_Strict):
    distortion: Literal["mse", "ms-ssim"] = "mse"
    lmbda: float = Field(0.0130, gt=0.0, description="R-D trade-off λ (paper's MSE set 0.0025-0.0483).")


class ScheduleConfig(_Strict):
    iterations: int = Field(..., ge=1, description="Iteration budget of the trial.")
    eval_every: int = Field(100, ge=1, description="Evaluate (and checkpoint) every K iterations.")
    lr: float = Field(1e-4, gt=0.0)
    aux_lr: float = Field(1e-3, gt=0.0, description="Entropy-bottleneck quantile optimizer learning rate.")
    milestones: list[float] = Field(
        default_factory=list, description="Fractions of the budget where lr is multiplied by `gamma`."
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup: int = Field(0, ge=0, description="Linear warm-up iterations.")
    clip_grad_norm: Optional[float] = Field(1.0, gt=0.0)
    seed: int = 0

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        for v in values:
            if not 0.0 < v < 1.0:
                raise ValueError(f"milestones are fractions of the budget in (0, 1), got {v}")
        if list(values) != sorted(values):
            raise ValueError(f"milestones must be increasing, got {values}")
        return values

    @model_validator(mode="after")
    def _eval_within_budget(self) -> "ScheduleConfig":
        if self.eval_every > self.iterations:
            self.eval_every = self.iterations
        return self


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

