"""Registry-driven tests: every backbone, with and without AuxT, at tiny widths (STYLE.md 5)."""

from __future__ import annotations

import pytest
import torch

from trainables.auxt import AugmentedTransform
from trainables.backbones import BACKBONES, BackboneError, get_backbone, register_backbone
from trainables.config import ModelConfig
from trainables.model import InputShapeError, LICModel, create_model

NAMES = sorted(BACKBONES)


def _tiny(name: str, auxt: bool) -> LICModel:
    N, M = BACKBONES[name].test_widths
    torch.manual_seed(0)
    return create_model(ModelConfig(backbone=name, N=N, M=M, auxt={"enabled": auxt}))


def _bpp(likelihoods: dict, num_pixels: int) -> torch.Tensor:
    return sum(-torch.log2(t).sum() for t in likelihoods.values()) / num_pixels


def test_registry_holds_the_papers_backbones() -> None:
    assert {"mbt2018-mean", "elic", "tcm-small", "tcm-large"} <= set(BACKBONES)


def test_duplicate_registration_is_an_error() -> None:
    spec = BACKBONES["mbt2018-mean"]
    with pytest.raises(BackboneError, match="already registered"):
        register_backbone(
            "mbt2018-mean", N=spec.N, M=spec.M, widths=spec.widths,
            analysis_positions=spec.analysis_positions, synthesis_positions=spec.synthesis_positions,
            down_layers=spec.down_layers, up_layers=spec.up_layers,
        )(spec.build)


def test_unknown_backbone_names_the_allowed_ones() -> None:
    with pytest.raises(BackboneError, match="mbt2018-mean"):
        get_backbone("mbt2019")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("auxt", [False, True], ids=["plain", "auxt"])
def test_forward_shapes_bpp_and_gradients(name: str, auxt: bool) -> None:
    model = _tiny(name, auxt)
    model.train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out["x_hat"].shape == x.shape
    assert out["y"].shape == (2, model.M, 4, 4)
    if auxt:
        assert out["y_auxt"] is not None and out["y_auxt"].shape == out["y"].shape
        assert isinstance(model.backbone.g_a, AugmentedTransform)
        assert isinstance(model.backbone.g_s, AugmentedTransform)
    else:
        assert out["y_auxt"] is None
    bpp = _bpp(out["likelihoods"], 2 * 64 * 64)
    assert torch.isfinite(bpp) and bpp.item() > 0
    ortho = model.ortho_loss()
    assert (ortho.item() > 0) is auxt
    loss = torch.mean((out["x_hat"] - x) ** 2) + 0.01 * bpp + 0.1 * ortho + model.aux_loss()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if auxt:
        for n, p in model.named_parameters():
            if ".branch." in n:
                assert p.grad.abs().sum() > 0, f"AuxT parameter {n} got a zero gradient"


VARIANTS = {
    "replace-resampling": {"replace_resampling": True},                      # Appendix A.2
    "stages-1-2": {"stages": [1, 2]},
    "a4-gdn-analysis": {"placement": "analysis", "downsample": "strided_conv", "nonlinearity": "gdn"},
    "db4-synthesis": {"placement": "synthesis", "wavelet": "db4"},
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_auxt_variants_fit_every_backbone(name: str, variant: str) -> None:
    N, M = BACKBONES[name].test_widths
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone=name, N=N, M=M, auxt={"enabled": True, **VARIANTS[variant]}))
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    assert out["x_hat"].shape == x.shape and out["y"].shape == (1, M, 4, 4)
    loss = torch.mean((out["x_hat"] - x) ** 2) + _bpp(out["likelihoods"], 64 * 64) + model.ortho_loss()
    (loss + model.aux_loss()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("auxt", [False, True], ids=["plain", "auxt"])
def test_compress_decompress_round_trip(name: str, auxt: bool) -> None:
    model = _tiny(name, auxt).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)["x_hat"].clamp(0, 1)  # forward reconstruction of the quantized latent
    encoded = model.compress(x)
    assert set(encoded) >= {"strings", "shape"}
    num_bytes = sum(len(s) for group in encoded["strings"] for s in group)
    assert num_bytes > 0
    decoded = model.decompress(encoded["strings"], encoded["shape"])
    assert decoded["x_hat"].shape == x.shape
    torch.testing.assert_close(decoded["x_hat"], reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_after_update_loads_into_a_fresh_model(name: str) -> None:
    model = _tiny(name, True).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    encoded = model.compress(x)
    fresh = _tiny(name, True).eval()
    torch.manual_seed(1)
    fresh = create_model(fresh.config)  # different random weights until loaded
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert fresh.compress(x)["strings"] == encoded["strings"]
    decoded = fresh.decompress(encoded["strings"], encoded["shape"])
    torch.testing.assert_close(decoded["x_hat"], model.decompress(encoded["strings"], encoded["shape"])["x_hat"])


@pytest.mark.parametrize("name", NAMES)
def test_parameter_split_is_disjoint_and_complete(name: str) -> None:
    model = _tiny(name, True)
    aux = {id(p) for p in model.aux_parameters()}
    main = {id(p) for p in model.main_parameters()}
    assert aux and not aux & main
    assert aux | main == {id(p) for p in model.parameters()}


def test_input_not_multiple_of_pad_is_a_user_error() -> None:
    model = _tiny("mbt2018-mean", False)
    with pytest.raises(InputShapeError, match="multiples of 64"):
        model(torch.rand(1, 3, 64, 96))

# Table 1 parameter counts are asserted on what `lic-search models --json` prints: tests/test_models_command.py
