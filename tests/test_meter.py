"""Progress of the long commands (search/monitor/meter.py): plain lines on a pipe, tqdm's bar on a
terminal (a pty), nothing with --quiet, stdout untouched, and Ctrl-C ending a command in one line."""

from __future__ import annotations

import fcntl
import io
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from search.cli import main
from search.monitor import meter as meters
from search.monitor.meter import Meter
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def loud():
    meters.configure(False)
    yield
    meters.configure(False)


def _pty(columns: int = 100) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


def _read(master: int, until: float, stop=lambda text: False) -> str:
    text = b""
    while time.time() < until:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            text += chunk
            if stop(text.decode(errors="replace")):
                break
    return text.decode(errors="replace")


def test_a_pipe_gets_a_plain_line_per_period_and_one_at_the_end(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    stream = io.StringIO()
    monkeypatch.setattr(meters, "PLAIN_PERIOD_S", 3600.0)
    with Meter("eval", "image", 4, stream=stream) as meter:
        meter.on("checkpoint_000004 · lof50-lr0.005")
        for bpp in (0.5, 0.7):
            meter.update(mean_bpp=bpp, mean_PSNR=29.25)
        assert stream.getvalue() == ""  # nothing before the period is up
        monkeypatch.setattr(meters, "PLAIN_PERIOD_S", 0.0)
        meter.update(mean_bpp=0.6, mean_PSNR=29.5)
        monkeypatch.setattr(meters, "PLAIN_PERIOD_S", 3600.0)
        meter.update(mean_bpp=0.65, mean_PSNR=29.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("eval: 3/4 [") and "image" in lines[0]
    assert lines[0].endswith("] · checkpoint_000004 · lof50-lr0.005 · mean bpp 0.6, mean PSNR 29.5")
    assert lines[1].startswith("eval: 4/4 [") and lines[1].endswith("mean bpp 0.65, mean PSNR 29.5")


def test_ci_set_gives_plain_lines_even_on_a_terminal_and_quiet_gives_nothing(monkeypatch):
    master, slave = _pty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setenv("CI", "true")
        with Meter("sync: shipping journal records", "record", 3, stream=terminal) as meter:
            meter.update(3)
        meters.configure(True)
        with Meter("report: reading runs", "run", 2, stream=terminal) as meter:
            meter.update(2)
        terminal.flush()
        text = _read(master, time.time() + 2, stop=lambda t: "\n" in t)
    assert text.startswith("sync: shipping journal records: 3/3 [") and "\r" not in text.rstrip("\r\n")
    assert "report" not in text


def test_a_terminal_gets_tqdms_bar_with_count_rate_and_eta(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    master, slave = _pty()
    with os.fdopen(slave, "w") as terminal:
        with Meter("eval", "image", 4, stream=terminal) as meter:
            meter.on("λ=0.013 · trial 3f2a")
            for _ in range(4):
                meter.update(mean_bpp=0.5, mean_PSNR=29.0)
        text = _read(master, time.time() + 2, stop=lambda t: "100%" in t and t.endswith("\n"))
    assert "\r" in text and "|" in text and "100%" in text and "4/4 [" in text
    assert "λ=0.013 · trial 3f2a · mean bpp 0.5, mean PSNR 29" in text


def test_ctrl_c_in_a_meter_is_said_in_one_line_with_what_was_written(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(KeyboardInterrupt):
        with Meter("sync: shipping journal records", "record", 10, stream=io.StringIO()) as meter:
            meter.written = "{n} record(s) shipped to MLflow; the rest stays in the journal"
            meter.update(4)
            raise KeyboardInterrupt
    assert meters.interrupted() == ("lic-search: stopped by Ctrl-C (sync: shipping journal records at 4/10 records; "
                                    "written: 4 record(s) shipped to MLflow; the rest stays in the journal)")
    assert meters.interrupted() == "lic-search: stopped by Ctrl-C"  # said once


def _offline_search(folder: Path, name: str) -> Path:
    """An experiment folder of a search started offline: its journal holds the parent run's creation."""
    from search.experiment.state import SearchState
    from search.experiment.store import ExperimentStore
    from search.tracking import session as tracking_session

    store = ExperimentStore(folder / name)
    store.create()
    tracking_session.journal_search_run(store, name, "name: x\n", ["loss.lmbda"])
    SearchState(name, f"sqlite:///{folder / 'mlflow.db'}", "").save(store)
    return Path(store.location)


def test_sync_on_a_pipe_prints_its_progress_on_stderr_and_stdout_stays_as_it_was(tmp_path: Path, capsys):
    first, second = _offline_search(tmp_path, "offline1"), _offline_search(tmp_path, "offline2")
    assert main(["sync", str(first)]) == 0
    shown = capsys.readouterr()
    assert "sync: shipping journal records: 1/1 [" in shown.err
    assert "sync:" not in shown.out and "shipped 1 tracking records" in shown.out
    assert main(["sync", str(second), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == shown.out.replace("offline1", "offline2")


@pytest.mark.slow
def test_estimate_in_a_terminal_shows_the_bar_and_ctrl_c_ends_it_in_one_line(tmp_path: Path):
    """Real Ctrl-C: the pty's interrupt character sends SIGINT to the command, as a terminal does."""
    from tests.test_search_e2e import write_space

    space = write_space(tmp_path, "timed", {"model.auxt.enabled": {"grid": [True, False]}}, {}, {"type": "fifo"})
    master, slave = _pty()
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"TERM": "xterm", "PYTHONPATH": str(REPO)}
    command = subprocess.Popen([sys.executable, "-m", "search.cli", "estimate", str(space), "--steps", "100000",
                                "--warmup", "1", "--device", "cpu"], stdin=slave, stdout=slave, stderr=slave,
                               cwd=tmp_path, env=env, start_new_session=True)
    os.close(slave)
    try:
        seen = _read(master, time.time() + 240, stop=lambda t: "estimate: timing step configurations:" in t
                     and "1/4: " in t)
        assert "estimate: timing step configurations:   0%|" in seen, seen
        os.killpg(command.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        rest = _read(master, time.time() + 60, stop=lambda t: "stopped by Ctrl-C" in t)
        assert command.wait(60) == 130
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
    assert "Traceback" not in seen + rest
    assert ("lic-search: stopped by Ctrl-C (estimate: timing step configurations at 0/4 timings; "
            "written: nothing)") in rest
