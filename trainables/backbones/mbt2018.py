"""mbt2018-mean: CompressAI's MeanScaleHyperprior (Minnen et al., NeurIPS 2018), unmodified."""

from __future__ import annotations

from compressai.models import CompressionModel, MeanScaleHyperprior

from trainables.backbones.registry import register_backbone


# g_a = [conv, GDN, conv, GDN, conv, GDN, conv]; g_s = [deconv, IGDN, deconv, IGDN, deconv, IGDN, deconv].
# WLS outputs are added after each down-sampling conv (the last one to the latent y); iWLS
# outputs before each up-sampling deconv and to the output (Section 4.2, mirrored).
#: The stage layout of mbt2018-mean's transforms, shared by the backbones built on them (msp-style).
MBT2018_LAYOUT = dict(
    N=192,
    M=320,
    widths=lambda N, M: (3, N, N, N, M),
    analysis_positions=(0, 2, 4, 6),
    synthesis_positions=(1, 3, 5, 6),
    down_layers=(0, 2, 4, 6),
    up_layers=(0, 2, 4, 6),
    pad_multiple=64,
    test_widths=(16, 24),
)


@register_backbone(
    "mbt2018-mean",
    **MBT2018_LAYOUT,
    decode_steps=lambda model, height, width: 1,  # ŷ in one parallel step from the hyperprior
)
def build_mbt2018_mean(N: int, M: int) -> CompressionModel:
    """Mean-scale hyperprior, Minnen et al. 2018 (CompressAI MeanScaleHyperprior)."""
    return MeanScaleHyperprior(N=N, M=M)
