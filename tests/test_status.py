"""`lic-search status` from a second process: on a running search, after its driver was killed
(it prints the resume command), and once resumed to the end (finished)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main
from tests.test_console import lic_search, quickstart_cut

pytestmark = pytest.mark.slow


def _status(capsys, target: str, *extra: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["status", target, "--json", *extra]) == 0
    data = json.loads(capsys.readouterr().out)
    assert main(["status", target, *extra]) == 0
    return data, capsys.readouterr().out


def _wait(condition, seconds: float, what: str, driver: subprocess.Popen):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        assert driver.poll() is None, f"the driver ended before {what}"
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def _reported(folder: Path) -> bool:
    """A trial has reported at least once (its result.json has a line)."""
    return any(p.stat().st_size > 0 for p in folder.glob("train_*/result.json"))


def test_status_on_a_running_a_killed_and_a_finished_search(tmp_path: Path, capsys):
    from search.space import load_space

    space = quickstart_cut(tmp_path, name="watched", num_samples=1, iterations=300, eval_every=10)
    load_space(space, check_data=False)  # status's imports done before the clock starts (trials are fast)
    folder = tmp_path / "lic_search_results" / "watched"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(space)], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "CI": "true"})
    try:
        _wait(lambda: any(folder.glob("drivers/driver-*.json")) and _reported(folder), 300, "a first result", driver)
        running, text = _status(capsys, str(folder))
        assert running["driver_alive"] is True and running["resume_command"] is None
        assert running["counts"]["running"] >= 1 and sum(running["counts"].values()) == 3
        progressed = [t for t in running["trials"] if t["state"] == "running" and t["iteration"] > 0]
        assert progressed and all(0 < t["iteration"] < t["budget"] == 300 for t in progressed)
        assert all(t["name"].startswith("λ=0.013 · auxt=") for t in running["trials"])
        assert "driver running (pid" in text and "/300 it" in text
        assert running["device_hours_unit"] == "CPU-hours"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a crash would
        driver.wait(30)
        log.close()

    killed, text = _status(capsys, "watched", "--storage-path", str(tmp_path / "lic_search_results"))
    assert killed["driver_alive"] is False
    assert killed["resume_command"] == f"lic-search resume {folder}"
    assert f"The driver is gone; continue with: lic-search resume {folder}" in text
    assert "driver gone (pid" in text

    resumed = lic_search("resume", str(folder), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finished, text = _status(capsys, str(folder))
    assert finished["driver_alive"] is False and finished["resume_command"] is None
    assert finished["driver"]["outcome"] == "FINISHED"
    counts = finished["counts"]
    assert counts["completed"] + counts["stopped"] == 3 and counts["running"] == counts["pending"] == 0
    assert finished["device_hours"] > 0
    assert len(finished["best"]) == 1 and finished["best"][0]["metrics"]["eval/rd_loss"] > 0
    assert "driver ended (FINISHED" in text and "best at λ=0.013, distortion=mse: eval/rd_loss = " in text
    assert "continue with" not in text
