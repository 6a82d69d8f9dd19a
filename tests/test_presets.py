"""Every preset in spaces/ validates; each full preset names its GPU budget and has a smoke variant."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.space import load_space
from tests.conftest import REPO

SPACES = REPO / "spaces"
FULL = sorted(p for p in SPACES.glob("*.yaml") if p.name != "quickstart.yaml")
SMOKE = sorted((SPACES / "smoke").glob("*.yaml"))


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.name)
def test_full_preset_validates_names_its_budget_and_has_a_smoke_variant(path: Path):
    spec = load_space(path, check_data=False)  # full presets point at the user's data folders
    assert spec.trial_count() >= 2
    assert "GPU" in spec.file.description
    assert (SPACES / "smoke" / path.name).is_file()


@pytest.mark.parametrize("path", SMOKE + [SPACES / "quickstart.yaml"], ids=lambda p: p.name)
def test_smoke_preset_validates_with_its_data(path: Path):
    spec = load_space(path)  # the shipped sample crops: data checked too
    assert 1 <= spec.trial_count() <= 9
    assert spec.budget() <= 600


def test_presets_cover_the_papers_experiments():
    names = {p.stem for p in FULL}
    assert {"ablation_lambda_orth", "ablation_wavelets", "ablation_components", "ablation_placement",
            "ablation_linearity", "ablation_scaling_init", "budgets", "rate_mse", "rate_ms_ssim"} <= names
    assert len(FULL) >= 11 and len(SMOKE) == len(FULL)
