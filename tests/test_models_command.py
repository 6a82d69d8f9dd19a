"""`lic-search models`: sizes of the registered backbones, as a user sees them."""

from __future__ import annotations

import json

import pytest

from search.cli import main
from trainables.backbones import BACKBONES

# Table 1 of the paper (#Params, M): the base model, + AuxT. ELIC "+ about 1 M".
TABLE_1 = {"mbt2018-mean": (17.6, 18.6), "elic": (33.8, 34.8), "tcm-small": (45.2, 45.8), "tcm-large": (76.6, 78.2)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


def _run_json(capsys, *args: str) -> list[dict]:
    assert main(["models", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_every_backbone_with_table1_parameter_counts(capsys) -> None:
    rows = _run_json(capsys, "--params-only")
    assert [r["name"] for r in rows] == sorted(BACKBONES)
    for row in rows:
        assert set(row) == {"name", "params", "params_auxt", "macs", "macs_auxt"}
        assert row["macs"] is None and row["macs_auxt"] is None
        assert row["params_auxt"] > row["params"]
    by_name = {r["name"]: r for r in rows}
    for name, (plain, auxt) in TABLE_1.items():
        assert by_name[name]["params"] / 1e6 == pytest.approx(plain, rel=0.02)
        assert by_name[name]["params_auxt"] / 1e6 == pytest.approx(auxt, rel=0.02)
    elic_gain = by_name["elic"]["params_auxt"] - by_name["elic"]["params"]
    assert 0.9e6 < elic_gain < 1.2e6  # "about 1 M"


def test_stf_matches_the_release_and_the_auxt_channel_plan(capsys) -> None:
    # 99,855,639 counted on the official SymmetricalTransFormer(); + AuxT's four WLS / iWLS
    # pairs on widths (3, 48, 96, 192, 384) gives 100.64 M (Table 1: 99.8 M / 100.6 M).
    (row,) = _run_json(capsys, "--params-only", "--backbone", "stf")
    assert row["name"] == "stf"
    assert row["params"] / 1e6 == pytest.approx(99.86, rel=0.01)
    assert row["params_auxt"] / 1e6 == pytest.approx(100.64, rel=0.01)


def test_reconstructions_are_listed_and_take_auxt_on_their_declared_widths(capsys) -> None:
    # llic-style has ELIC's stage widths (3, N, N, N, M) and msp-style mbt2018-mean's: AuxT's shortcuts,
    # attached at the stage positions each declares, add exactly the same parameters.
    rows = {r["name"]: r for r in _run_json(capsys, "--params-only", "--backbone", "llic-style", "--backbone", "elic",
                                             "--backbone", "msp-style", "--backbone", "mbt2018-mean")}
    gain = {name: row["params_auxt"] - row["params"] for name, row in rows.items()}
    assert gain["llic-style"] == gain["elic"] and gain["msp-style"] == gain["mbt2018-mean"]
    assert rows["llic-style"]["params"] / 1e6 == pytest.approx(32.25, rel=0.01)
    assert rows["msp-style"]["params"] / 1e6 == pytest.approx(25.52, rel=0.01)


def test_auxt_macs_equal_the_analytic_count_of_its_shortcuts(capsys) -> None:
    (row,) = _run_json(capsys, "--backbone", "mbt2018-mean")
    # Per stage k (C_k -> C_k+1 channels, P_k+1 output pixels of 768x512 / 4^(k+1)), WLS and
    # iWLS each cost the OLP's 4 C_k C_k+1 MACs per output pixel (the Haar DWT is folded into it).
    widths = (3, 192, 192, 192, 320)
    expected = sum(2 * 4 * widths[k] * widths[k + 1] * (768 * 512 // 4 ** (k + 1)) for k in range(4))
    # plus building the fused Haar kernels once per pass: 16 C_k C_k+1 per shortcut (+ bias patterns)
    kernels = sum(2 * 16 * widths[k] * widths[k + 1] for k in range(4))
    assert expected + kernels <= row["macs_auxt"] - row["macs"] <= expected + kernels + 2 * 16 * sum(widths)
    # Table 1 reports about 44 (enc) + 43 (dec) GMACs, with the hyper-decoder in both
    assert 75e9 < row["macs"] < 90e9


def test_table_output_names_backbones_and_sizes(capsys) -> None:
    assert main(["models", "--params-only", "--backbone", "mbt2018-mean", "--backbone", "tcm-small"]) == 0
    out = capsys.readouterr().out
    assert "mbt2018-mean" in out and "tcm-small" in out and "tcm-large" not in out
    assert "17.6" in out and "45.2" in out


def test_unknown_backbone_is_a_user_error(capsys) -> None:
    assert main(["models", "--backbone", "nope"]) == 2
    assert "allowed: " in capsys.readouterr().err


def test_second_run_reads_the_cache_and_no_cache_recounts(capsys, tmp_path) -> None:
    first = _run_json(capsys, "--backbone", "mbt2018-mean")
    cache = tmp_path / "lic-search" / "models.json"
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == first
    # a tampered entry is served as is: proof the second run did not recount
    key = next(iter(stored))
    stored[key]["params"] = 1
    cache.write_text(json.dumps(stored))
    assert _run_json(capsys, "--backbone", "mbt2018-mean")[0]["params"] == 1
    assert _run_json(capsys, "--backbone", "mbt2018-mean", "--params-only")[0] == {**stored[key], "macs": None,
                                                                                    "macs_auxt": None}
    assert _run_json(capsys, "--backbone", "mbt2018-mean", "--no-cache", "--params-only")[0]["params"] == 17561699
