"""`model.init_from`: weights-only warm starts for every backbone ± AuxT, the partial AuxT case, and the
bad files (missing, corrupt, another backbone or width), each refused with the file and key path."""

from __future__ import annotations

import pytest
import torch

from trainables.backbones import BACKBONES
from trainables.config import ModelConfig, TrialConfig
from trainables.model import create_model
from trainables.training.warm_start import WarmStartError, apply_warm_start

from conftest import tiny_trial


def _model_config(backbone: str, auxt: bool, **extra) -> ModelConfig:
    N, M = BACKBONES[backbone].test_widths
    return ModelConfig(backbone=backbone, N=N, M=M, auxt={"enabled": auxt}, **extra)


def _save_tool_checkpoint(folder, config: ModelConfig, seed: int = 1):
    """A checkpoint folder as a trial writes it: state.pt with the model and the trial config."""
    torch.manual_seed(seed)
    model = create_model(config)
    trial = TrialConfig.model_validate(tiny_trial(model=config.model_dump(mode="json")))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": trial.model_dump(mode="json"), "iteration": 7},
               folder / "state.pt")
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple[str, ...] = ()) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not any(s in k for s in skip))


@pytest.mark.parametrize("auxt", [False, True], ids=["plain", "auxt"])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_starts_from_its_checkpoint(tmp_path, backbone, auxt):
    config = _model_config(backbone, auxt)
    trained = _save_tool_checkpoint(tmp_path / "ckpt", config)
    torch.manual_seed(2)
    fresh = create_model(config)
    assert not _same_weights(fresh, trained)
    start = apply_warm_start(fresh, config.model_copy(update={"init_from": str(tmp_path / "ckpt")}))
    assert _same_weights(fresh, trained)
    assert start.loaded == len(fresh.state_dict()) and start.kept == []


def test_compressai_state_dicts_load(tmp_path):
    config = _model_config("mbt2018-mean", False)
    torch.manual_seed(1)
    trained = create_model(config)
    torch.save(trained.backbone.state_dict(), tmp_path / "zoo.pth.tar")  # CompressAI zoo: the bare dict
    torch.save({"epoch": 3, "state_dict": trained.backbone.state_dict()}, tmp_path / "train.pth.tar")  # examples/train.py
    for file in ("zoo.pth.tar", "train.pth.tar"):
        torch.manual_seed(2)
        fresh = create_model(config)
        apply_warm_start(fresh, config.model_copy(update={"init_from": str(tmp_path / file)}))
        assert _same_weights(fresh, trained)


def test_adding_auxt_needs_init_from_partial(tmp_path):
    plain = _model_config("mbt2018-mean", False)
    trained = _save_tool_checkpoint(tmp_path / "ckpt", plain)
    with_auxt = _model_config("mbt2018-mean", True, init_from=str(tmp_path / "ckpt"))
    torch.manual_seed(3)
    model = create_model(with_auxt)
    with pytest.raises(WarmStartError, match="init_from_partial: true") as refused:
        apply_warm_start(model, with_auxt)
    assert "model.init_from" in str(refused.value) and "g_a.branch" in str(refused.value)

    torch.manual_seed(3)
    model = create_model(with_auxt)
    branch_before = {k: v.clone() for k, v in model.state_dict().items() if ".branch." in k}
    start = apply_warm_start(model, with_auxt.model_copy(update={"init_from_partial": True}))
    state = model.state_dict()
    assert start.kept and set(start.kept) == set(branch_before)  # exactly AuxT's parameters kept their init
    assert all(torch.equal(state[k], v) for k, v in branch_before.items())
    trained_state = trained.state_dict()
    for key, value in trained_state.items():  # every trained tensor landed in the wrapped layers
        target = key.replace(".g_a.", ".g_a.layers.").replace(".g_s.", ".g_s.layers.")
        assert torch.equal(state[target], value), key
    assert start.loaded == len(trained_state)


def test_auxt_weights_do_not_load_into_a_model_without_auxt(tmp_path):
    _save_tool_checkpoint(tmp_path / "ckpt", _model_config("mbt2018-mean", True))
    plain = _model_config("mbt2018-mean", False, init_from=str(tmp_path / "ckpt"), init_from_partial=True)
    with pytest.raises(WarmStartError, match="not in the model: backbone.g_a.layers"):
        apply_warm_start(create_model(plain), plain)


def test_bad_files_are_named(tmp_path):
    config = _model_config("mbt2018-mean", False)
    missing = config.model_copy(update={"init_from": str(tmp_path / "nowhere")})
    with pytest.raises(WarmStartError, match=r"model.init_from: no checkpoint at .*nowhere"):
        apply_warm_start(create_model(config), missing)

    corrupt = tmp_path / "corrupt" / "state.pt"
    _save_tool_checkpoint(corrupt.parent, config)
    corrupt.write_bytes(corrupt.read_bytes()[:1000])  # truncated, as a crash mid-copy leaves it
    with pytest.raises(WarmStartError, match=r"model.init_from: cannot read .*corrupt/state.pt"):
        apply_warm_start(create_model(config), config.model_copy(update={"init_from": str(corrupt.parent)}))

    _save_tool_checkpoint(tmp_path / "elic", _model_config("elic", False))
    with pytest.raises(WarmStartError, match=r"trained with backbone 'elic'.*trial's model.backbone is 'mbt2018-mean'"):
        apply_warm_start(create_model(config), config.model_copy(update={"init_from": str(tmp_path / "elic")}))

    wider = _model_config("mbt2018-mean", False).model_copy(update={"N": 24})
    _save_tool_checkpoint(tmp_path / "wide", wider)
    with pytest.raises(WarmStartError, match=r"N=24.*N=16"):
        apply_warm_start(create_model(config), config.model_copy(update={"init_from": str(tmp_path / "wide")}))

    torch.save(create_model(wider).backbone.state_dict(), tmp_path / "wide.pth")  # no config: told by shapes
    with pytest.raises(WarmStartError, match=r"other tensor shapes .*another width"):
        apply_warm_start(create_model(config), config.model_copy(update={"init_from": str(tmp_path / "wide.pth")}))

    torch.save({"not": "weights"}, tmp_path / "junk.pt")
    with pytest.raises(WarmStartError, match="holds no model weights"):
        apply_warm_start(create_model(config), config.model_copy(update={"init_from": str(tmp_path / "junk.pt")}))


def test_trainer_starts_fresh_from_loaded_weights(tmp_path):
    """Weights only: the optimizer, schedule and iteration of the source are not carried over."""
    from trainables.training.checkpoint import save_checkpoint
    from trainables.training.engine import Trainer

    source = Trainer(TrialConfig.model_validate(tiny_trial(**{"schedule.iterations": 3})))
    for _ in source.train():
        pass
    save_checkpoint(source.state_dict(), tmp_path / "ckpt")
    config = TrialConfig.model_validate(tiny_trial(**{"model.init_from": str(tmp_path / "ckpt"), "loss.lmbda": 0.05}))
    started = Trainer(config)
    assert _same_weights(started.model, source.model)
    assert started.iteration == 0 and not started.optimizer.state  # fresh Adam moments
    assert started.warm_start.loaded == len(source.model.state_dict())
    resumed = Trainer(config, warm_start=False)  # a resumed trial loads its own checkpoint instead
    assert resumed.warm_start is None and not _same_weights(resumed.model, source.model)


def _space(tmp_path, init_from, **model) -> "Path":
    import yaml

    from tests.conftest import SAMPLES

    space = {"name": "warm", "trial": {
        "model": {**_model_config("mbt2018-mean", False).model_dump(include={"backbone", "N", "M"}),
                  "init_from": init_from, **model},
        "data": {"train": str(SAMPLES / "train"), "eval": str(SAMPLES / "eval"), "crop_size": 64, "batch_size": 2},
        "schedule": {"iterations": 4, "eval_every": 2}}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_the_space_checks_init_from_before_ray_starts(tmp_path):
    """Relative paths are resolved against the space file; a bad file is a SpaceError at its key path."""
    from search.errors import SpaceError
    from search.space import load_space

    _save_tool_checkpoint(tmp_path / "ckpt", _model_config("mbt2018-mean", False))
    spec = load_space(_space(tmp_path, "ckpt"))
    assert spec.file.trial["model"]["init_from"] == str(tmp_path / "ckpt")
    cases = {"nowhere": "no checkpoint at", "ckpt": "set model.init_from_partial: true"}
    for init_from, message in cases.items():
        with pytest.raises(SpaceError, match=message) as refused:
            load_space(_space(tmp_path, init_from, auxt={"enabled": True}))
        assert refused.value.key_path == "trial.model.init_from"
        assert str(refused.value).startswith(str(tmp_path / "space.yaml"))
    assert load_space(_space(tmp_path, "ckpt", auxt={"enabled": True}, init_from_partial=True))
