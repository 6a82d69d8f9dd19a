"""ELIC (He et al., CVPR 2022): CompressAI's Elic2022Chandelier, unmodified.

The Chandelier variant is the one whose size matches the paper's Table 1 (33.8 M
parameters); CompressAI's Elic2022Official has 32.1 M.
"""

from __future__ import annotations

from compressai.models import CompressionModel, Elic2022Chandelier

from trainables.backbones.registry import register_backbone


def channel_groups(M: int) -> list[int]:
    """ELIC's uneven channel groups [16, 16, 32, 64, M-128] at M = 320, scaled for other M."""
    if M == 320:
        return [16, 16, 32, 64, 192]
    head = [max(1, M * g // 320) for g in (16, 16, 32, 64)]
    if sum(head) >= M:
        raise ValueError(f"ELIC needs M large enough for five channel groups, but got M={M}")
    return head + [M - sum(head)]


# g_a = [conv↓, RBB×3, conv↓, RBB×3, Attn, conv↓, RBB×3, conv↓, Attn]
# g_s = [Attn, deconv↑, RBB×3, deconv↑, Attn, RBB×3, deconv↑, RBB×3, deconv↑]
# WLS after each down-sampling conv, the last one on g_a's output (the latent, after the
# final attention block); iWLS before each up-sampling deconv and on g_s's output.
@register_backbone(
    "elic",
    N=192,
    M=320,
    widths=lambda N, M: (3, N, N, N, M),
    analysis_positions=(0, 4, 9, 14),
    synthesis_positions=(4, 9, 13, 14),
    down_layers=(0, 4, 9, 13),
    up_layers=(1, 5, 10, 14),
    pad_multiple=64,
    test_widths=(16, 40),
    decode_steps=lambda model, height, width: 2 * len(model.groups),  # checkerboard halves of each group
)
def build_elic(N: int, M: int) -> CompressionModel:
    """ELIC, He et al. 2022 (CompressAI Elic2022Chandelier)."""
    return Elic2022Chandelier(N=N, M=M, groups=channel_groups(M))
