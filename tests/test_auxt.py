"""AuxT building blocks (paper Section 4.1, Appendix A.5) and its ablation switches."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch
from torch import nn

from trainables.auxt import (
    IWLS,
    OLP,
    WLS,
    AugmentedTransform,
    AuxTConfigError,
    DWT2d,
    IDWT2d,
    SubbandScaling,
    orthogonality_penalty,
    split_subbands,
)
from trainables.config import ModelConfig
from trainables.model import create_model

BASES = ["haar", "db2", "db4", "sym4", "coif1", "bior2.2"]


ORTHOGONAL = [b for b in BASES if pywt.Wavelet(b).orthogonal]


def _random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q


@pytest.mark.parametrize("basis", BASES)
def test_dwt_matches_pywavelets_and_reconstructs(basis: str) -> None:
    x = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    dwt, idwt = DWT2d(3, basis).double(), IDWT2d(3, basis).double()
    coefficients = dwt(x)
    assert coefficients.shape == (2, 12, 8, 6)
    ll, lh, hl, hh = split_subbands(coefficients)
    ref_ll, (ref_lh, ref_hl, ref_hh) = pywt.dwt2(x.numpy(), basis, mode="periodization")
    for ours, ref in [(ll, ref_ll), (lh, ref_lh), (hl, ref_hl), (hh, ref_hh)]:
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    # perfect reconstruction, also when the signal is shorter than the filter (periodic wrap)
    torch.testing.assert_close(idwt(coefficients), x, atol=1e-6, rtol=0)
    tiny = torch.randn(1, 3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(idwt(dwt(tiny)), tiny, atol=1e-6, rtol=0)


def test_haar_filters_are_the_papers() -> None:
    # f_LL = 1/2[[1,1],[1,1]], f_LH = 1/2[[1,1],[-1,-1]], f_HL = 1/2[[1,-1],[1,-1]], f_HH = 1/2[[1,-1],[-1,1]]
    x = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    ll, lh, hl, hh = (t.item() for t in split_subbands(DWT2d(1, "haar")(x)))
    assert ll == pytest.approx((1 + 2 + 3 + 5) / 2)
    assert lh == pytest.approx((1 + 2 - 3 - 5) / 2)
    assert hl == pytest.approx((1 - 2 + 3 - 5) / 2)
    assert hh == pytest.approx((1 - 2 - 3 + 5) / 2)


@pytest.mark.parametrize("basis", ORTHOGONAL)
def test_orthogonal_dwt_preserves_energy(basis: str) -> None:
    x = torch.randn(3, 4, 32, 16, dtype=torch.float64)
    energy_in = x.pow(2).sum().item()
    energy_out = DWT2d(4, basis).double()(x).pow(2).sum().item()
    assert energy_out == pytest.approx(energy_in, rel=1e-6)


def test_biorthogonal_dwt_is_not_energy_preserving() -> None:
    # bior2.2 is a real biorthogonal (non-orthogonal) basis: reconstruction exact, energy not kept.
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    ratio = DWT2d(1, "bior2.2").double()(x).pow(2).sum() / x.pow(2).sum()
    assert abs(ratio.item() - 1.0) > 0.01


@pytest.mark.parametrize("basis", BASES)
def test_iwls_inverts_wls_with_square_orthogonal_projection(basis: str) -> None:
    C = 3
    kwargs = dict(wavelet=basis, scaling_init=(1.0, 0.5, 0.5, 0.0))
    wls, iwls = WLS(C, 4 * C, **kwargs).double(), IWLS(4 * C, C, **kwargs).double()
    W = _random_orthogonal(4 * C)
    with torch.no_grad():
        wls.olp.proj.weight.copy_(W.reshape(4 * C, 4 * C, 1, 1))
        wls.olp.proj.bias.zero_()
        iwls.olp.proj.weight.copy_(W.t().reshape(4 * C, 4 * C, 1, 1))
        iwls.olp.proj.bias.zero_()
        s = torch.randn(4, C, dtype=torch.float64)
        wls.scaling.s.copy_(s)
        iwls.scaling.s.copy_(s)  # matched scaling: iWLS divides by what WLS multiplied
    x = torch.randn(2, C, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(iwls(wls(x)), x, atol=1e-5, rtol=0)
    assert wls.olp.ortho_loss("frobenius").item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("cls", [WLS, IWLS])
@pytest.mark.parametrize("scaling", [True, False])
def test_fused_haar_path_equals_three_step_form(cls: type, scaling: bool) -> None:
    torch.manual_seed(0)
    module = (cls(5, 7, scaling=scaling) if cls is WLS else cls(7, 5, scaling=scaling)).double()
    assert module.fuse  # Haar, linear: runs as one (transposed) 2x2 stride-2 convolution
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    x = torch.randn(2, module.in_channels, 8, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(module(x).shape, dtype=torch.float64)
    results = []
    for fuse in (True, False):
        module.fuse = fuse
        module.zero_grad()
        x.grad = None
        y = module(x)
        (y * weights).sum().backward()
        results.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in module.parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(gx1, gx2)
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b)


def test_longer_bases_and_nonlinear_iwls_are_not_fused() -> None:
    assert not WLS(3, 4, wavelet="db2").fuse and not IWLS(4, 3, wavelet="db2").fuse
    assert not IWLS(4, 3, nonlinearity="relu").fuse and WLS(3, 4, nonlinearity="relu").fuse


def test_subband_scaling_multiplies_each_band_by_exp_s() -> None:
    scaling = SubbandScaling(2, (1.0, 0.5, 0.5, 0.0))
    coefficients = torch.ones(1, 8, 2, 2)
    ll, lh, hl, hh = split_subbands(scaling(coefficients))
    assert torch.allclose(ll, torch.full_like(ll, np.exp(1.0)))
    assert torch.allclose(lh, torch.full_like(lh, np.exp(0.5)))
    assert torch.allclose(hl, torch.full_like(hl, np.exp(0.5)))
    assert torch.allclose(hh, torch.ones_like(hh))
    assert scaling.s.shape == (4, 2)  # four learnable C-vectors


@pytest.mark.parametrize("shape", [(8, 16), (16, 8), (12, 12)])
@pytest.mark.parametrize("norm", ["mean", "frobenius"])
def test_ortho_loss_zero_at_orthogonal_and_grows_away(shape: tuple[int, int], norm: str) -> None:
    out_features, in_features = shape
    # orthonormal rows (out <= in) or orthonormal columns (out > in): a (semi-)orthogonal W
    q = _random_orthogonal(max(shape))[:out_features, :in_features]
    assert orthogonality_penalty(q, norm).item() == pytest.approx(0.0, abs=1e-12)
    direction = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    losses = [orthogonality_penalty(q + t * direction, norm).item() for t in (0.01, 0.1, 0.5, 1.0)]
    assert all(a < b for a, b in zip(losses, losses[1:])), losses
    assert losses[0] > 0


def test_ortho_norms_relate_by_gram_size() -> None:
    W = torch.randn(6, 10, dtype=torch.float64)
    gram = W @ W.t()  # the smaller side, 6x6
    frob = ((gram - torch.eye(6, dtype=torch.float64)) ** 2).sum()
    assert orthogonality_penalty(W, "frobenius").item() == pytest.approx(frob.item())
    assert orthogonality_penalty(W, "mean").item() == pytest.approx(frob.item() / 36)
    # Lemma A.1: the two Gram sides differ by a constant (here 10 - 6), so either gives the same gradient
    big = ((W.t() @ W - torch.eye(10, dtype=torch.float64)) ** 2).sum()
    assert big.item() - frob.item() == pytest.approx(4.0)


def test_olp_is_a_1x1_projection() -> None:
    olp = OLP(12, 5)
    x = torch.randn(2, 12, 3, 3)
    expected = torch.einsum("oi,bihw->bohw", olp.matrix, x) + olp.proj.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(olp(x), expected)
    assert OLP(12, 5, constrained=False).ortho_loss().item() == 0.0


# ---------------------------------------------------------------- model-level behaviour

def _tiny(**auxt: object) -> ModelConfig:
    return ModelConfig(backbone="mbt2018-mean", N=8, M=12, auxt={"enabled": True, **auxt})


def _signature(model: nn.Module) -> dict[str, tuple]:
    """Per-module structure: type, own parameter shapes, OLP constraint flag, scaling init, DWT basis."""
    sig = {}
    for name, module in model.named_modules():
        params = tuple((n, tuple(p.shape)) for n, p in module.named_parameters(recurse=False))
        extra: tuple = ()
        if isinstance(module, OLP):
            extra = (module.constrained,)
        elif isinstance(module, SubbandScaling):
            extra = tuple(module.s[:, 0].tolist())
        elif isinstance(module, (DWT2d, IDWT2d)):
            extra = (module.wavelet,)
        sig[name] = (type(module).__name__, params, extra)
    return sig


def _changed(base: dict, other: dict) -> set[str]:
    names = set(base) | set(other)
    return {n for n in names if base.get(n) != other.get(n)}


BASE = _signature(create_model(_tiny()).backbone)


@pytest.mark.parametrize(
    "switch, allowed",
    [
        ({"projection": "unconstrained"}, ("olp",)),                  # A1
        ({"scaling": False}, ("scaling",)),                          # A2
        ({"downsample": "avgpool"}, ("down", "up", "scaling", "olp")),  # A3: pooling keeps C channels
        ({"downsample": "strided_conv"}, ("down", "up", "scaling")),  # A4
        ({"nonlinearity": "relu"}, ("act",)),                        # Figure 8d
        ({"nonlinearity": "gdn"}, ("act",)),
        ({"wavelet": "db4"}, ("down", "up")),                        # Figure 8b
        ({"scaling_init": "official"}, ("scaling",)),
        ({"scaling_init": (0.1, 0.2, 0.3, 0.4)}, ("scaling",)),
    ],
)
def test_each_ablation_switch_changes_only_its_module(switch: dict, allowed: tuple[str, ...]) -> None:
    changed = _changed(BASE, _signature(create_model(_tiny(**switch)).backbone))
    assert changed, f"{switch} changed nothing"
    for name in changed:
        parts = name.split(".")
        assert "branch" in parts and any(a in parts for a in allowed), f"{switch} changed {name}"


def test_a1_unconstrained_projection_has_zero_ortho_loss() -> None:
    assert create_model(_tiny()).ortho_loss().item() > 0
    assert create_model(_tiny(projection="unconstrained")).ortho_loss().item() == 0.0


def test_a2_without_scaling_wls_is_olp_of_dwt() -> None:
    wls = WLS(3, 8, scaling=False)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(wls(x), wls.olp(DWT2d(3)(x)))
    assert not any(isinstance(m, SubbandScaling) for m in wls.modules())


@pytest.mark.parametrize("placement, in_a, in_s", [
    ("both", True, True), ("analysis", True, False), ("synthesis", False, True), ("none", False, False),
])
def test_placement_touches_only_its_transform(placement: str, in_a: bool, in_s: bool) -> None:
    backbone = create_model(_tiny(placement=placement)).backbone
    plain = create_model(ModelConfig(backbone="mbt2018-mean", N=8, M=12)).backbone
    assert isinstance(backbone.g_a, AugmentedTransform) is in_a
    assert isinstance(backbone.g_s, AugmentedTransform) is in_s
    for name in ("h_a", "h_s", "entropy_bottleneck", "gaussian_conditional"):
        assert _signature(getattr(backbone, name)) == _signature(getattr(plain, name))
    inner_a = backbone.g_a.layers if in_a else backbone.g_a
    assert _signature(inner_a) == _signature(plain.g_a)


def test_stage_subset_builds_chain_to_farthest_stage_and_adds_only_selected() -> None:
    backbone = create_model(_tiny(stages=[1])).backbone
    # analysis: chain x -> WLS0 -> WLS1, added at stage 1 only; synthesis: y_hat -> iWLS3..iWLS1
    assert len(backbone.g_a.branch) == 2 and backbone.g_a.add == (False, True)
    assert len(backbone.g_s.branch) == 3 and backbone.g_s.add == (False, False, True)
    assert [m.out_channels for m in backbone.g_s.branch] == [8, 8, 8]
    model = create_model(_tiny(stages=[3]))
    assert len(model.backbone.g_a.branch) == 4 and len(model.backbone.g_s.branch) == 1
    out = model(torch.rand(1, 3, 64, 64))
    assert out["y_auxt"] is not None and out["y_auxt"].shape == out["y"].shape
    assert create_model(_tiny(stages=[0]))(torch.rand(1, 3, 64, 64))["y_auxt"] is None


def test_stage_out_of_range_is_a_user_error() -> None:
    with pytest.raises(AuxTConfigError, match="model.auxt.stages"):
        create_model(_tiny(stages=[4]))


def test_replace_resampling_swaps_the_resampling_layers_only() -> None:  # Appendix A.2
    backbone = create_model(_tiny(replace_resampling=True)).backbone
    plain = create_model(ModelConfig(backbone="mbt2018-mean", N=8, M=12)).backbone
    assert not isinstance(backbone.g_a, AugmentedTransform)
    for i, (ours, theirs) in enumerate(zip(backbone.g_a, plain.g_a)):
        expected = WLS if i in (0, 2, 4, 6) else type(theirs)
        assert type(ours) is expected
    for i, (ours, theirs) in enumerate(zip(backbone.g_s, plain.g_s)):
        expected = IWLS if i in (0, 2, 4, 6) else type(theirs)
        assert type(ours) is expected
    x = torch.rand(1, 3, 64, 64)
    model = create_model(_tiny(replace_resampling=True))
    out = model(x)
    assert out["x_hat"].shape == x.shape and out["y_auxt"] is None


def test_y_auxt_is_the_last_wls_output_added_to_the_latent() -> None:
    model = create_model(_tiny())
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    g_a = model.backbone.g_a
    with torch.no_grad():
        aux = x
        for wls in g_a.branch:
            aux = wls(aux)
    torch.testing.assert_close(out["y_auxt"], aux)
    # removing the branch's contribution leaves the nonlinear path's output
    h, a = x, x
    with torch.no_grad():
        for i, layer in enumerate(g_a.layers):
            h = layer(h)
            if i in (0, 2, 4):
                a = g_a.branch[(0, 2, 4).index(i)](a)
                h = h + a
    torch.testing.assert_close(out["y"] - out["y_auxt"], h, atol=1e-5, rtol=1e-5)
