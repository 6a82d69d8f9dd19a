"""BD-rate against known values: CompressAI's published curves and constructed curves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from search.analysis.bdrate import bd_rate, quality_db
from search.analysis.curves import (
    CurveError,
    RDCurve,
    check_comparable,
    curve_from_dict,
    load_curve,
    save_curve,
    shipped_anchor,
)
from search.cli import main
from trainables.errors import LicSearchError

SHARED = Path(__file__).resolve().parents[2] / "shared"
KODAK_ANCHORS = SHARED / "anchors" / "kodak"

# /work/shared/README.md: CompressAI's mbt2018-mean (MSE) against VTM on Kodak, PSNR-RGB,
# computed with the bjontegaard package.
REFERENCE = {"pchip": 21.28, "akima": 21.28, "cubic": 21.03}


def _printed_bd_rate(text: str) -> float:
    match = re.search(r"^BD-rate: ([+-]\d+\.\d+)%$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


@pytest.mark.shared
@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_cli_matches_reference_mbt2018_mean_vs_vtm(method, capsys):
    curve = KODAK_ANCHORS / "compressai-mbt2018-mean_mse_cuda.json"
    if not curve.is_file():
        pytest.skip(f"{curve} absent (../shared is not beside this checkout)")
    # default anchor = the shipped copy of VTM
    assert main(["bd-rate", str(curve), "--method", method]) == 0
    printed = _printed_bd_rate(capsys.readouterr().out)
    assert printed == pytest.approx(REFERENCE[method], abs=0.01)
    # the same against ../shared's VTM file, as JSON
    assert main(["bd-rate", str(curve), "--anchor", str(KODAK_ANCHORS / "vtm.json"), "--method", method,
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["bd_rate"] == pytest.approx(REFERENCE[method], abs=0.01)
    assert payload["anchor"] == "VTM" and payload["test"] == "mbt2018-mean"


@pytest.mark.shared
def test_shipped_vtm_is_the_published_curve():
    published = KODAK_ANCHORS / "vtm.json"
    if not published.is_file():
        pytest.skip(f"{published} absent (../shared is not beside this checkout)")
    assert json.loads(shipped_anchor().read_text()) == json.loads(published.read_text())


def test_scaled_rate_gives_known_bd_rate(tmp_path, capsys):
    vtm = load_curve(shipped_anchor())
    assert vtm.name == "VTM" and len(vtm) == 8
    for method in ("pchip", "akima", "cubic"):
        for factor in (0.9, 1.25):
            test = RDCurve("scaled", [b * factor for b in vtm.bpp], psnr=vtm.psnr, ms_ssim=vtm.ms_ssim)
            for metric in ("psnr", "ms-ssim"):
                result = bd_rate(test, vtm, metric=metric, method=method)
                assert result.bd_rate == pytest.approx((factor - 1) * 100, abs=1e-6)
                assert result.overlap == pytest.approx(1.0)
    # through the CLI, with the CompressAI-era key spelling ("psnr", "ms-ssim")
    path = tmp_path / "scaled.json"
    path.write_text(json.dumps({"name": "scaled", "results": {
        "bpp": [b * 0.9 for b in vtm.bpp], "psnr": vtm.psnr, "ms-ssim": vtm.ms_ssim}}))
    assert main(["bd-rate", str(path)]) == 0
    assert _printed_bd_rate(capsys.readouterr().out) == pytest.approx(-10.0, abs=0.005)
    assert main(["bd-rate", str(path), "--metric", "ms-ssim", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bd_rate"] == pytest.approx(-10.0, abs=1e-6)


def test_quality_shift_gives_bd_psnr_and_point_order_does_not_matter():
    vtm = load_curve(shipped_anchor())
    reversed_shifted = RDCurve("shifted", vtm.bpp[::-1], psnr=[p + 0.5 for p in vtm.psnr[::-1]])
    result = bd_rate(reversed_shifted, vtm, method="pchip")
    assert result.bd_quality == pytest.approx(0.5, abs=1e-9)
    assert result.bd_rate < 0  # better quality at the same rate = fewer bits at the same quality


def test_ms_ssim_is_compared_in_db():
    np.testing.assert_allclose(quality_db([0.9, 0.99], "ms-ssim"), [10.0, 20.0])


def test_curve_round_trip_writes_rgb_keys(tmp_path):
    curve = RDCurve("mine", [0.1, 0.2], psnr=[30.0, 32.0], ms_ssim=[0.95, 0.97], extra={"encoding_time": [1, 2]})
    path = save_curve(curve, tmp_path / "sub" / "mine.json")
    data = json.loads(path.read_text())
    assert set(data["results"]) == {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time"}
    again = load_curve(path)
    assert (again.bpp, again.psnr, again.ms_ssim, again.extra) == (curve.bpp, curve.psnr, curve.ms_ssim, curve.extra)


def _write(tmp_path: Path, name: str, payload) -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"name": "x"}, "missing 'results'"),
        ({"results": {"psnr-rgb": [30.0]}}, 'no "bpp"'),
        ({"results": {"bpp": [0.1, -0.2], "psnr-rgb": [30.0, 31.0]}}, "results.bpp[1] must be > 0"),
        ({"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30.0]}}, "results.psnr-rgb has 1 values"),
        ({"results": {"bpp": [0.1, 0.2], "psnr": [30.0, "x"]}}, "results.psnr[1] must be a finite number"),
        ({"results": {"bpp": [0.1], "ms-ssim": [12.0]}}, "raw MS-SSIM in (0, 1)"),
    ],
)
def test_malformed_files_name_file_and_key(tmp_path, payload, message):
    path = _write(tmp_path, "bad.json", payload)
    with pytest.raises(CurveError) as info:
        load_curve(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, LicSearchError)


def test_cli_errors_exit_2_with_message(tmp_path, capsys):
    missing = tmp_path / "missing.json"
    assert main(["bd-rate", str(missing)]) == 2
    assert f"{missing}: no such R-D curve file" in capsys.readouterr().err
    psnr_only = _write(tmp_path, "psnr_only.json", {"name": "p", "results": {
        "bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [28.0, 30.0, 32.0, 34.0]}})
    assert main(["bd-rate", str(psnr_only), "--metric", "ms-ssim"]) == 2
    err = capsys.readouterr().err
    assert str(psnr_only) in err and '"ms-ssim-rgb" or "ms-ssim"' in err


def test_too_few_points_and_disjoint_ranges_are_errors():
    vtm = load_curve(shipped_anchor())
    three = RDCurve("three", [0.1, 0.2, 0.4], psnr=[28.0, 30.0, 32.0], source="three.json")
    with pytest.raises(CurveError, match=r"three.json: curve 'three' has 3 rate points; BD-rate needs at least 4"):
        bd_rate(three, vtm)
    low = RDCurve("low", [0.01, 0.02, 0.03, 0.04], psnr=[10.0, 11.0, 12.0, 13.0], source="low.json")
    with pytest.raises(CurveError, match=r"low.json and .*vtm.json: the psnr ranges do not overlap"):
        bd_rate(low, vtm)
    duplicate = RDCurve("dup", [0.1, 0.2, 0.4, 0.8], psnr=[28.0, 30.0, 30.0, 34.0], source="dup.json")
    with pytest.raises(CurveError, match="same psnr"):
        bd_rate(duplicate, vtm)
    with pytest.raises(CurveError, match="method must be one of pchip, akima, cubic"):
        bd_rate(vtm, vtm, method="linear")


def test_curve_from_dict_uses_file_stem_when_unnamed():
    curve = curve_from_dict({"results": {"bpp": [0.5], "psnr-rgb": [30.0]}}, "/x/my-codec.json")
    assert curve.name == "my-codec"


# ------------------------------------------------------------------ which images a curve was measured on
def _vtm_scaled(tmp_path: Path, name: str, factor: float, lic_search: Optional[dict] = None) -> Path:
    """VTM's own points at ``factor`` times its rate: BD-rate (factor - 1) * 100 % by construction."""
    vtm = json.loads(shipped_anchor().read_text())["results"]
    payload = {"name": name, "results": {"bpp": [b * factor for b in vtm["bpp"]], "psnr-rgb": vtm["psnr-rgb"]}}
    if lic_search is not None:
        payload["lic_search"] = lic_search
    return _write(tmp_path, f"{name}.json", payload)


CROPS = {"image_set": {"folder": "samples/kodak-crops/eval", "count": 4, "sizes": {"192x128": 4}},
         "rate": "bitstream"}
KODAK_24 = {"image_set": {"folder": "/data/kodak", "count": 24, "sizes": {"512x768": 6, "768x512": 18}},
            "rate": "bitstream"}


def test_shipped_anchor_knows_it_is_the_24_kodak_images():
    vtm = load_curve(shipped_anchor())
    assert (vtm.image_set.count, vtm.image_set.sizes, vtm.rate) == (24, {"768x512": 18, "512x768": 6}, "bitstream")


def test_bd_rate_refuses_a_curve_measured_on_other_images_than_the_kodak_anchor(tmp_path, capsys):
    crops = _vtm_scaled(tmp_path, "crops", 0.9, CROPS)
    assert main(["bd-rate", str(crops)]) == 2
    err = capsys.readouterr().err
    assert str(crops) in err and "4 images (4 x 192x128)" in err and "24 images (18 x 768x512, 6 x 512x768)" in err
    assert "--allow-other-set" in err
    # With the flag: computed, and the mismatch is a warning on stderr and in the JSON.
    assert main(["bd-rate", str(crops), "--allow-other-set", "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    assert payload["note"].startswith("warning: ") and "4 images" in payload["note"]
    assert payload["test_images"]["count"] == 4 and payload["anchor_images"]["count"] == 24
    assert "warning:" in captured.err


def test_bd_rate_accepts_the_same_set_in_another_folder_and_notes_unrecorded_sets(tmp_path, capsys):
    kodak = _vtm_scaled(tmp_path, "kodak", 1.25, KODAK_24)  # same count and sizes, other folder, other key order
    assert main(["bd-rate", str(kodak)]) == 0
    captured = capsys.readouterr()
    assert _printed_bd_rate(captured.out) == pytest.approx(25.0, abs=0.005)
    assert captured.err == "" and "24 images (18 x 768x512, 6 x 512x768) in /data/kodak" in captured.out
    # A CompressAI-published curve says nothing about its images: compared, with a note.
    unknown = _vtm_scaled(tmp_path, "published", 1.25)
    assert main(["bd-rate", str(unknown)]) == 0
    assert "published does not record its images" in capsys.readouterr().err


def test_likelihood_rates_are_labelled_wherever_a_bd_rate_uses_them(tmp_path, capsys):
    training = _vtm_scaled(tmp_path, "training", 1.25, {"rate": "likelihood"})
    assert main(["bd-rate", str(training), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["test_rate"] == "likelihood" and "training-time eval/bpp, a likelihood estimate" in payload["note"]
    # A rate family's curve (report, best --by family) is training-time eval/bpp, labelled so.
    from search.analysis.families import Family, TrialPoint

    points = [TrialPoint(f"t{i}", {"loss.lmbda": l}, bpp=b, psnr=p)
              for i, (l, b, p) in enumerate(zip((0.002, 0.004, 0.008, 0.016), (0.1, 0.2, 0.4, 0.8),
                                                (28.0, 30.0, 32.0, 34.0)))]
    curve = Family("F", {}, points).curve()
    assert curve.rate == "likelihood"
    assert "likelihood estimate" in check_comparable(curve, load_curve(shipped_anchor()))
    assert load_curve(save_curve(curve, tmp_path / "family.json")).rate == "likelihood"


def test_provenance_round_trips_and_malformed_sets_name_the_key(tmp_path):
    curve = load_curve(_vtm_scaled(tmp_path, "kodak", 1.0, KODAK_24))
    again = load_curve(save_curve(curve, tmp_path / "again.json"))
    assert again.image_set == curve.image_set and again.rate == "bitstream"
    bad = _vtm_scaled(tmp_path, "bad", 1.0, {"image_set": {"count": 24, "sizes": {"768x512": 18}}})
    with pytest.raises(CurveError, match=r"bad.json: lic_search.image_set.sizes .* add up to count \(24\)"):
        load_curve(bad)
    rate = _vtm_scaled(tmp_path, "rate", 1.0, {"rate": "guessed"})
    with pytest.raises(CurveError, match=r"rate.json: lic_search.rate must be one of bitstream, likelihood"):
        load_curve(rate)
