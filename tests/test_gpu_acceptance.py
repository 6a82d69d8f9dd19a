"""bench/gpu_acceptance.py --smoke: every GPU acceptance section runs (CPU, tiny sizes) and the
report it writes has each section with numeric ratios and a verdict, so the GPU run never rots."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "1. AuxT step time ÷ plain",
    "2. Trainable (report + checkpoint path) ÷ bare loop",
    "3. Data loader ÷ GPU consumption",
    "4. bf16 autocast, channels_last, torch.compile vs fp32 eager",
    "5. Four trials at 0.25 GPU ÷ one trial alone (total it/s)",
    "6. Our engine ÷ CompressAI's examples/train.py loop",
)
# Verdict lines per section: 4 backbones; ± AuxT; 1; 3 variants; 1; 1.
VERDICTS = (4, 2, 1, 3, 1, 1)


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path: Path) -> None:
    output = tmp_path / "gpu-smoke.md"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_acceptance.py"), "--smoke", "--output",
                           str(output)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = output.read_text()
    assert "Command: `python bench/gpu_acceptance.py --smoke --output" in report
    assert re.search(r"^Device: CPU \(.*\); torch \S+;", report, re.M)
    parts = re.split(r"^## ", report, flags=re.M)[1:]
    assert [p.splitlines()[0] for p in parts] == list(SECTIONS)
    for part, expected in zip(parts, VERDICTS):
        verdicts = re.findall(r"^- .*: ratio \*\*(\d+\.\d+)\*\* \(target [^)]+\): (PASS|FAIL)$", part, re.M)
        assert len(verdicts) == expected, part
        assert all(0.0 < float(value) < 1000.0 for value, _ in verdicts), part
    # The table rows carry measured numbers, not placeholders.
    assert not re.search(r"\bnan\b|\binf\b", report, re.I)
    summary = re.search(r"(\d+) of (\d+) checks pass", report)
    assert summary and int(summary.group(2)) == sum(VERDICTS)
