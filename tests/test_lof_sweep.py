"""`lic-search eval --search NAME --lof-iterations ..`: LOF settings on a real search's best trials, in MLflow."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from search.analysis.lof_sweep import latest_checkpoint, lof_metric, parse_lof_metric
from search.cli import main
from search.tracking import names as T
from search.tracking.queries import best_trials, trial_runs, winners
from tests.conftest import SAMPLES
from tests.test_search_e2e import write_space

EVAL = SAMPLES / "eval"


@pytest.mark.slow
def test_sweep_logs_every_setting_on_the_rank_1_trial_of_each_rate_point(tmp_path: Path, ray_cluster,
                                                                         capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # AuxT on/off × two λ: four trials, two rate points, so two trials are not rank 1.
    space = write_space(tmp_path, "lofsweep", {"loss.lmbda": {"grid": [0.0035, 0.0483]}, "schedule.iterations": 6,
                                               "schedule.eval_every": 3}, {"max_concurrent": 2}, {"type": "fifo"})
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(space), "--storage-path", str(tmp_path / "results"), "--tracking-uri", uri]) == 0
    out = tmp_path / "curves" / "rd.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["eval", "--search", "lofsweep", "--tracking-uri", uri, "--data", str(EVAL), "--max-images", "1",
                     "--device", "cpu", "--lof-iterations", "0,20", "--lof-lr", "0.01", "--json", str(out)]) == 0
    # progress on stderr (not a terminal: the last line): 2 rate points x 2 settings x 1 image, where it was
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval --search: ")]
    assert len(progress) == 1 and progress[0].startswith("eval --search: 4/4 [") and " · trial " in progress[0]
    assert " · lof20-lr0.01 · mean bpp " in progress[0] and "eval --search" not in printed.getvalue()

    best = winners(best_trials("lofsweep", tracking_uri=uri))
    assert len(best) == 2
    files = sorted(p.name for p in out.parent.glob("rd-*.json"))
    assert files == ["rd-lof0.json", "rd-lof20-lr0.01.json"]
    for name in files:  # one curve per setting, one point per rate point, ordered by rate
        curve = json.loads((out.parent / name).read_text())
        assert curve["name"] == f"lofsweep {name[3:-5]}"
        assert len(curve["results"]["bpp"]) == 2 and all(b > 0 for b in curve["results"]["bpp"])
        assert sorted(curve["results"]["lmbda"]) == [0.0035, 0.0483]

    runs = {r.info.run_id: r for r in trial_runs("lofsweep", uri)}
    assert len(runs) == 4
    swept = {run_id for run_id, r in runs.items() if any(parse_lof_metric(k) for k in r.data.metrics)}
    assert swept == {row["run_id"] for row in best}
    for row in best:
        run = runs[row["run_id"]]
        metrics = run.data.metrics
        for label in ("lof0", "lof20-lr0.01"):
            for name in ("bpp", "psnr", "rd_loss", "encode_s", "decode_s"):
                assert metrics[lof_metric(label, name)] > 0
        assert metrics[lof_metric("lof20-lr0.01", "rd_loss")] <= metrics[lof_metric("lof0", "rd_loss")] + 1e-9
        assert metrics[lof_metric("lof20-lr0.01", "encode_s")] > metrics[lof_metric("lof0", "encode_s")]
        assert run.data.tags[T.TAG_LOF_DATA] == f"{EVAL.resolve()} (first 1)"
        checkpoint = Path(run.data.tags[T.TAG_LOF_CHECKPOINT])
        assert checkpoint.name == "checkpoint_000001" and checkpoint.parent.is_dir()  # 6 iterations, eval every 3
        assert set(json.loads(run.data.tags[T.TAG_LOF_SETTINGS])) == {"lof0", "lof20-lr0.01"}
        # each setting's real-bitstream results, image by image, on the run (through the journal)
        from search.analysis.lof_sweep import per_image_artifact
        from search.tracking.client import client_for
        from trainables.metrics import PerImage

        client = client_for(uri)
        for label in ("lof0", "lof20-lr0.01"):
            local = client.download_artifacts(row["run_id"], per_image_artifact(label), str(tmp_path))
            table = PerImage.from_json(Path(local).read_text())
            assert len(table.names) == 1 and table.names[0].endswith(".png")
            assert table.columns["bpp"][0] == pytest.approx(metrics[lof_metric(label, "bpp")])
            assert table.columns["rd_loss"][0] == pytest.approx(metrics[lof_metric(label, "rd_loss")], rel=1e-6)
            assert table.columns["mse"][0] > 0

    # The report's "Latent overfitting" section: two rate points, so mean changes (no BD-rate), and the cost.
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", "lofsweep", "--tracking-uri", uri, "--out", str(tmp_path / "report")]) == 0
    (row,) = json.loads((tmp_path / "report" / "report.json").read_text())["latent_overfitting"]
    assert row["setting"] == "lof20-lr0.01" and row["trials"] == 2 and row["bd_rate"] is None
    assert row["encode_ratio"] > 1
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Latent overfitting" in markdown and "| lof20-lr0.01 | 2 | n/a (< 4 rate points) |" in markdown


def test_lof_summary_gives_bd_rate_from_4_rate_points_and_mean_changes_always() -> None:
    from search.analysis.lof_sweep import lof_summary

    def trial(bpp: float, psnr: float) -> dict[str, float]:  # LOF: 5% fewer bits, +0.1 dB, 10x encode time
        return {lof_metric("lof0", "bpp"): bpp, lof_metric("lof0", "psnr"): psnr, lof_metric("lof0", "encode_s"): 0.1,
                lof_metric("lof20-lr0.01", "bpp"): 0.95 * bpp, lof_metric("lof20-lr0.01", "psnr"): psnr + 0.1,
                lof_metric("lof20-lr0.01", "encode_s"): 1.0}

    trials = [trial(b, p) for b, p in [(0.2, 28.0), (0.4, 30.0), (0.8, 32.0), (1.5, 34.0)]]
    (four,) = lof_summary(trials)
    assert four["trials"] == 4 and -12 < four["bd_rate"] < -5  # fewer bits *and* better quality: beyond -5%
    assert four["rate_change"] == pytest.approx(-5) and four["psnr_change"] == pytest.approx(0.1)
    assert four["encode_ratio"] == pytest.approx(10)
    (two,) = lof_summary(trials[:2] + [{lof_metric("lof0", "bpp"): 0.3}])  # a trial without the setting is left out
    assert two["trials"] == 2 and two["bd_rate"] is None and two["rate_change"] == pytest.approx(-5)


def test_latest_checkpoint_is_the_highest_numbered_folder_of_the_trials_own_folder(tmp_path: Path) -> None:
    for folder in ("train_abc12_00000_0_lmbda=0.1_2026-01-01", "train_abc12_00001_1_lmbda=0.2_2026-01-01"):
        for n in (0, 2, 10):
            (tmp_path / folder / f"checkpoint_{n:06d}").mkdir(parents=True)
    found = latest_checkpoint(str(tmp_path), "abc12_00001")
    assert found == tmp_path / "train_abc12_00001_1_lmbda=0.2_2026-01-01" / "checkpoint_000010"
    assert latest_checkpoint(f"file://{tmp_path}", "abc12_00000").parent.name.startswith("train_abc12_00000_0")


def test_missing_checkpoints_are_user_errors(tmp_path: Path) -> None:
    from search.errors import LicSearchError

    (tmp_path / "train_abc12_00000_0_x").mkdir()
    with pytest.raises(LicSearchError, match="abc12_00009.*no checkpoint_NNNNNN"):
        latest_checkpoint(str(tmp_path), "abc12_00009")


def test_lof_metric_keys_round_trip() -> None:
    assert lof_metric("lof50-lr0.005", "bpp") == "lof/lof50-lr0.005/bpp"
    assert parse_lof_metric("lof/lof50-lr0.005/rd_loss") == ("lof50-lr0.005", "rd_loss")
    assert parse_lof_metric("eval/bpp") is None


def test_search_sweep_without_settings_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--search", "x", "--data", str(EVAL), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert "--lof-iterations" in capsys.readouterr().err
