"""The llic-style and msp-style reconstructions: their own knobs and mechanisms.

Shapes, finite bpp, gradients and the round trip of both (± AuxT) are covered with every
other backbone by the registry-driven tests in tests/test_backbones.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from search.errors import SpaceError
from search.space import load_space
from tests.conftest import REPO
from trainables.backbones.llic import ChannelFactors, LargeKernelConv
from trainables.backbones.msp import MSPStyle, group_map
from trainables.config import LLICConfig, ModelConfig, MSPConfig
from trainables.model import LICModel, create_model


def _llic(**options) -> LICModel:
    torch.manual_seed(0)
    return create_model(ModelConfig(backbone="llic-style", N=8, M=40, llic=options))


def _msp(steps: int) -> LICModel:
    torch.manual_seed(0)
    return create_model(ModelConfig(backbone="msp-style", N=16, M=24, msp={"steps": steps}))


# ----------------------------------------------------------------------------- llic-style
def test_self_conditioned_kernels_run_as_one_grouped_conv_equal_to_per_sample_convs() -> None:
    torch.manual_seed(0)
    layer = LargeKernelConv(6, 7, self_conditioned=True)
    x = torch.randn(3, 6, 20, 20)
    kernels = layer.kernels(x)
    assert kernels.shape == (3, 6, 7, 7)
    assert not torch.allclose(kernels[0], kernels[1])  # per sample: conditioned on its own input
    expected = torch.cat([F.conv2d(x[b:b + 1], kernels[b].unsqueeze(1), layer.bias, padding=3, groups=6)
                          for b in range(3)])
    torch.testing.assert_close(layer(x), expected)
    # the modulation keeps every tap between 0 and twice the static kernel's
    static = layer.weight.squeeze(1).abs()
    assert (kernels.abs() <= 2 * static + 1e-7).all()


def test_kernel_sizes_reach_the_stages_mirrored_in_the_synthesis() -> None:
    model = _llic(kernel_sizes=[3, 5, 7, 9])
    analysis = [m.kernel_size for m in model.backbone.g_a.modules() if isinstance(m, LargeKernelConv)]
    synthesis = [m.kernel_size for m in model.backbone.g_s.modules() if isinstance(m, LargeKernelConv)]
    assert analysis == [3, 5, 7, 7, 7, 9]          # blocks per stage [1, 1, 3, 1]
    assert synthesis == [9, 7, 7, 7, 5, 3]         # [1, 3, 1, 1], latent side first


def test_static_kernels_and_channel_factors_off_drop_their_parameters() -> None:
    full = _llic()
    static = _llic(kernel="static")
    plain = _llic(channel_factors=False)
    lk = [m for m in static.backbone.modules() if isinstance(m, LargeKernelConv)]
    assert lk and all(m.generator is None for m in lk)
    assert not any(isinstance(m, ChannelFactors) for m in plain.backbone.modules())
    assert sum(isinstance(m, ChannelFactors) for m in full.backbone.modules()) == 12  # one per block
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(static) < count(full) and count(plain) < count(full)
    x = torch.rand(1, 3, 64, 64)
    assert torch.isfinite(static(x)["x_hat"]).all() and torch.isfinite(plain(x)["x_hat"]).all()


def test_llic_blocks_stay_linear_in_the_size_of_their_input() -> None:
    """No normalisation layer: a block whose gain grew with its input overflowed in training."""
    g_s = _llic().backbone.g_s
    torch.manual_seed(0)
    small = torch.randn(1, 40, 4, 4)
    ratio = g_s(small * 1000).abs().max() / g_s(small).abs().max()
    assert ratio < 1000 * 10  # a kernel offset W + tanh(G) gave ~1e7 here, a quadratic one far more


@pytest.mark.parametrize("options, match", [
    ({"kernel_sizes": [11, 11, 8, 9]}, "odd"),
    ({"kernel": "dynamic"}, "self-conditioned"),
    ({"kernel_sizes": [5, 5, 5]}, "kernel_sizes"),
])
def test_llic_knobs_are_validated(options: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        LLICConfig(**options)


# ----------------------------------------------------------------------------- msp-style
def test_groups_run_coarse_to_fine_and_split_the_latent_evenly() -> None:
    two = group_map(2, 8, 8)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(two, (i + j) % 2)           # checkerboard: one half first
    four = group_map(4, 8, 8)
    assert torch.equal(four[0::2, 0::2], torch.zeros(4, 4, dtype=torch.long))   # coarse lattice first
    assert torch.equal(four[1::2, 1::2], torch.ones(4, 4, dtype=torch.long))    # its diagonal next
    for steps in (1, 2, 4, 8, 16):
        groups = group_map(steps, 8, 8)
        assert torch.bincount(groups.flatten()).tolist() == [64 // steps] * steps
        # each profile refines the next coarser one: its groups nest inside the coarser profile's
        if steps > 1:
            assert torch.equal(groups // 2, group_map(steps // 2, 8, 8))
    assert group_map(16, 8, 8)[0, 0] == 0 and group_map(16, 8, 8)[2, 2] == 1   # stride-4 lattice, then 2
    with pytest.raises(ValueError, match="divide 16"):
        group_map(3, 4, 4)


def _count_decode_steps(model: LICModel, size: int) -> tuple[int, int]:
    """(context-network runs, range-decoding passes per image) of one real decompress at size x size."""
    backbone: MSPStyle = model.backbone
    encoded = model.compress(torch.rand(1, 3, size, size))
    runs = []
    handle = backbone.context_prediction.register_forward_hook(lambda *args: runs.append(1))
    passes = []
    original = backbone.__class__.decompress

    from compressai.ans import RansDecoder

    decode_stream = RansDecoder.decode_stream

    def counting(self, *args, **kwargs):
        passes.append(1)
        return decode_stream(self, *args, **kwargs)

    RansDecoder.decode_stream = counting
    try:
        original(backbone, encoded["strings"], encoded["shape"])
    finally:
        RansDecoder.decode_stream = decode_stream
        handle.remove()
    return len(runs), len(passes)


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_decoding_steps_are_the_same_at_64_and_256_pixels(steps: int) -> None:
    model = _msp(steps).eval()
    model.update(force=True)
    small, large = _count_decode_steps(model, 64), _count_decode_steps(model, 256)
    assert small == large == (steps, steps)
    assert model.decode_steps(64, 64) == model.decode_steps(256, 256) == steps


@pytest.mark.parametrize("steps", [1, 2, 8, 16])
def test_every_profile_round_trips_exactly(steps: int) -> None:
    model = _msp(steps).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        reference = model(x)["x_hat"].clamp(0, 1)
    encoded = model.compress(x)
    decoded = model.decompress(encoded["strings"], encoded["shape"])
    torch.testing.assert_close(decoded["x_hat"], reference, atol=1e-4, rtol=0)


def test_profiles_share_their_parameters() -> None:
    """Profiles differ only in the decoding schedule: the same weights load into every profile."""
    two, eight = _msp(2), _msp(8)
    assert two.state_dict().keys() == eight.state_dict().keys()
    eight.load_state_dict(two.state_dict())
    with pytest.raises(ValidationError):
        MSPConfig(steps=3)


def test_every_backbone_declares_its_decode_steps() -> None:
    from trainables.backbones import BACKBONES

    steps = {}
    for name, spec in BACKBONES.items():
        N, M = spec.test_widths
        steps[name] = create_model(ModelConfig(backbone=name, N=N, M=M)).decode_steps(512, 768)
    assert steps["mbt2018-mean"] == 1 and steps["elic"] == steps["llic-style"] == 10
    assert steps["tcm-small"] == 5 and steps["stf"] == 12 and steps["msp-style"] == 4


# ----------------------------------------------------------------------------- spaces
def test_a_backbone_section_no_trial_reads_is_a_space_error(tmp_path) -> None:
    data = (REPO / "samples" / "kodak-crops" / "train").as_posix()
    space = tmp_path / "space.yaml"
    space.write_text(f"""
name: wrong-section
trial:
  model: {{backbone: {{grid: [mbt2018-mean, elic]}}, llic: {{kernel: static}}}}
  data: {{train: {data}, eval: {data}}}
  schedule: {{iterations: 10}}
""")
    with pytest.raises(SpaceError, match=r"trial\.model\.llic: has no effect: only backbone\(s\) llic-style"):
        load_space(space)
    # with llic-style among the backbones the section is read by some trials: valid
    space.write_text(space.read_text().replace("[mbt2018-mean, elic]", "[mbt2018-mean, llic-style]"))
    assert load_space(space).trial_count() == 2


def test_validate_keys_lists_the_backbone_knobs(capsys) -> None:
    from search.cli import main

    assert main(["validate", "--keys"]) == 0
    out = capsys.readouterr().out
    for key in ("trial.model.llic.kernel_sizes", "trial.model.llic.kernel", "trial.model.llic.channel_factors",
                "trial.model.msp.steps"):
        assert f"\n{key}:" in out, key
