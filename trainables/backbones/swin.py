"""Swin window attention shared by the Transformer backbones (TCM, STF).

(Shifted-)window multi-head self-attention with a relative position bias (Liu et al.,
ICCV 2021), written once: TCM's mixed blocks and STF's stages both use it. Inputs are
channels-last ``(B, H, W, C)`` maps, padded to a multiple of the window inside the
attention and cropped back, so any map size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables import batch_noise

__all__ = ["WindowAttention", "SwinBlock", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = batch_noise.per_sample(x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)), lambda m: m.bernoulli_(keep))
        return x * mask / keep


class WindowAttention(nn.Module):
    """(Shifted-)window multi-head self-attention with relative position bias (Swin)."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width must be a multiple of head_dim={head_dim}, but got {dim}")
        self.head_dim = head_dim
        self.n_heads = dim // head_dim
        self.scale = head_dim ** -0.5
        self.window_size = window_size
        self.shifted = shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.linear = nn.Linear(dim, dim)
        table = torch.zeros(self.n_heads, 2 * window_size - 1, 2 * window_size - 1)
        nn.init.trunc_normal_(table, std=0.02)
        self.relative_position_params = nn.Parameter(table)
        coords = torch.stack(torch.meshgrid(
            torch.arange(window_size), torch.arange(window_size), indexing="ij"
        ), dim=-1).reshape(-1, 2)
        relation = coords[:, None, :] - coords[None, :, :] + window_size - 1
        self.register_buffer("relation", relation, persistent=False)

    def relative_embedding(self) -> Tensor:
        """(heads, p, p) bias for the p = window² positions of a window."""
        return self.relative_position_params[:, self.relation[..., 0], self.relation[..., 1]]

    def _mask(self, h_windows: int, w_windows: int, device: torch.device) -> Tensor:
        """Mask of the shifted windows that wrap around the border (True = blocked)."""
        p, s = self.window_size, self.window_size - self.window_size // 2
        mask = torch.zeros(h_windows, w_windows, p, p, p, p, dtype=torch.bool, device=device)
        mask[-1, :, :s, :, s:, :] = True
        mask[-1, :, s:, :, :s, :] = True
        mask[:, -1, :, :s, :, s:] = True
        mask[:, -1, :, s:, :, :s] = True
        return mask.reshape(h_windows * w_windows, p * p, p * p)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) channels-last."""
        b, height, width, c = x.shape
        p = self.window_size
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = height + pad_h, width + pad_w
        if self.shifted:
            x = torch.roll(x, shifts=(-(p // 2), -(p // 2)), dims=(1, 2))
        hw, ww = hp // p, wp // p
        windows = x.reshape(b, hw, p, ww, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hw * ww, p * p, c)
        qkv = self.embedding_layer(windows)  # (b, nw, np, 3·heads·head_dim)
        qkv = qkv.reshape(b, hw * ww, p * p, 3 * self.n_heads, self.head_dim).permute(3, 0, 1, 2, 4)
        q, k, v = qkv.chunk(3, dim=0)  # each (heads, b, nw, np, head_dim)
        sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.scale
        sim = sim + self.relative_embedding()[:, None, None]
        if self.shifted:
            sim = sim.masked_fill(self._mask(hw, ww, x.device), float("-inf"))
        probs = sim.softmax(dim=-1)
        out = torch.einsum("hbwij,hbwjc->hbwic", probs, v)
        out = out.permute(1, 2, 3, 0, 4).reshape(b, hw * ww, p * p, c)
        out = self.linear(out)
        out = out.reshape(b, hw, ww, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shifted:
            out = torch.roll(out, shifts=(p // 2, p // 2), dims=(1, 2))
        if pad_h or pad_w:
            out = out[:, :height, :width]
        return out


class SwinBlock(nn.Module):
    """Pre-norm Transformer block: window attention then a 4x MLP, both residual (optionally stochastic depth)."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window_size, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))
