"""The MLflow UI as a user first meets it, checked in a real (headless) Chromium; the pictures of the README and docs/.

    python bench/ui_check.py [--space docs/tour.yaml] [--workdir DIR] [--shots docs]

Runs the space with ``lic-search run`` in ``--workdir`` (a temporary folder by default; a folder that
already holds the finished search is reused), starts ``lic-search ui`` on a free loopback port, opens the
URL it prints with headless Chromium (``--dump-dom``) and checks that the page is the runs table in
Model-training mode, grouped by rate point, listing every trial of the search by name. Exit status 0
when every check passes. ``--shots DIR`` also writes the docs' PNGs: the run's console, ``status``,
the MLflow runs page and the report's R-D, convergence and schedule plots.

Needs Chromium (Debian: ``apt-get install chromium``); without it the script says so and exits 0
(``--require-browser`` makes that a failure).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the checkout's search package
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# A fresh profile and nothing that reaches outside: the page is served on the loopback.
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars")
RENDER_BUDGET_MS = 30000  # virtual time the page gets to fetch the runs and render
ATTEMPTS = 3
GENAI_LANDING = ("Detect Issues in Your Traces", "No data available for the selected time range")


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lic_search(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("CI", "1")  # the console's plain (non-terminal) form: what a log or a screenshot shows
    return env


def run_search(space: Path, workdir: Path) -> tuple[str, str]:
    """The search's name and its console output (the run is skipped when the folder already holds it)."""
    import yaml

    name = yaml.safe_load(space.read_text())["name"]
    console = workdir / "console.txt"
    if not (workdir / "lic_search_results" / name).is_dir():
        done = subprocess.run(lic_search("run", str(space)), cwd=workdir, env=_env(),
                              capture_output=True, text=True, timeout=1800)
        console.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"lic-search run failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return name, console.read_text() if console.exists() else ""


class Ui:
    """``lic-search ui NAME --port P`` in the background; ``url`` is the link it prints."""

    def __init__(self, name: str, workdir: Path):
        self.port = free_port()
        self.process = subprocess.Popen(lic_search("ui", name, "--port", str(self.port)), cwd=workdir,
                                        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.printed: list[str] = []
        for line in self.process.stdout:  # it prints once the UI answers
            self.printed.append(line.rstrip())
            if "viewStateShareKey=" in line:
                self.url = line.strip()
                return
        raise SystemExit("lic-search ui printed no URL:\n" + "\n".join(self.printed))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def chromium(executable: str, url: str, *args: str, width: int = 1600, height: int = 900) -> str:
    profile = tempfile.mkdtemp(prefix="lic-search-chromium-")
    try:
        done = subprocess.run([executable, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                               f"--window-size={width},{height}", f"--virtual-time-budget={RENDER_BUDGET_MS}",
                               *args, url],
                              capture_output=True, text=True, timeout=300)
        return done.stdout
    except subprocess.TimeoutExpired:  # a stuck load counts as a failed attempt
        return ""
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM, one element's text a line."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    return "\n".join(t for t in (html.unescape(part).strip() for part in re.split(r"<[^>]+>", dom)) if t)


def trial_names(name: str, workdir: Path) -> tuple[list[str], list[str]]:
    """The latest search's trial run names and rate points, read from MLflow."""
    from search.tracking import names as T
    from search.tracking.queries import trial_runs

    runs = trial_runs(name, f"sqlite:///{workdir / 'mlflow.db'}")
    return [r.info.run_name for r in runs], sorted({r.data.tags.get(T.TAG_RATE_POINT, "") for r in runs})


def check(text: str, runs: list[str], rate_points: list[str]) -> list[str]:
    """What the page must show; the failures, empty when it passes."""
    failures = []
    lines = set(text.splitlines())
    if "Run Name" not in lines:
        failures.append("no runs table (no 'Run Name' column header): not the Model-training runs page")
    if any(phrase in text for phrase in GENAI_LANDING):
        failures.append("the GenAI overview (traces) is showing")
    if "Group by: lic_search.rate_point" not in text.replace("\n", " "):
        failures.append("the runs are not grouped by lic_search.rate_point")
    for point in rate_points:
        if f"Group: {point}" not in lines:
            failures.append(f"no group row for rate point {point!r}")
    missing = [r for r in runs if r not in lines]
    if missing:
        failures.append(f"{len(missing)} of {len(runs)} trial runs missing from the table: {missing}")
    return failures


def terminal_png(executable: str, text: str, out: Path, title: str, width: int = 1240) -> None:
    """A console transcript as a terminal-like PNG (Chromium renders it)."""
    lines = text.rstrip().splitlines()
    page = out.with_suffix(".html")
    page.write_text(
        "<!doctype html><meta charset='utf-8'><body style='margin:0;background:#1e1e1e'>"
        "<div style='font:600 13px sans-serif;color:#aaa;padding:8px 14px;background:#2d2d2d'>"
        f"{html.escape(title)}</div>"
        "<pre style='margin:0;padding:10px 14px;color:#ddd;font:12.5px/1.45 DejaVu Sans Mono,monospace;"
        f"white-space:pre-wrap'>{html.escape(chr(10).join(lines))}</pre>")
    height = 40 + int(len(lines) * 18.2 + sum(len(line) // 140 for line in lines) * 18.2) + 24
    chromium(executable, page.as_uri(), f"--screenshot={out}", width=width, height=height)
    page.unlink()


def small_png(source: Path, out: Path, width: int = 900) -> None:
    """A copy at most ``width`` pixels wide, 8-bit palette: docs pictures stay small."""
    from PIL import Image

    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def shots(executable: str, ui: Ui, name: str, workdir: Path, console: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(prefix="lic-search-shots-"))
    chromium(executable, ui.url, f"--screenshot={raw / 'runs.png'}", width=1900, height=760)
    small_png(raw / "runs.png", folder / "mlflow-runs.png", width=1400)
    terminal_png(executable, console.replace(str(workdir) + "/", ""), raw / "console.png",
                 f"$ lic-search run {name}.yaml")
    small_png(raw / "console.png", folder / "console.png", width=1240)
    status = subprocess.run(lic_search("status", name), cwd=workdir, env=_env(), capture_output=True,
                            text=True, timeout=600)
    terminal_png(executable, status.stdout.replace(str(workdir) + "/", ""), raw / "status.png",
                 f"$ lic-search status {name}")
    small_png(raw / "status.png", folder / "status.png", width=1240)
    report = workdir / "report"
    done = subprocess.run(lic_search("report", name, "--out", str(report)), cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"lic-search report failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    from search.analysis import report_render as R

    for plot, picture in ((R.PLOT_RD_PSNR, "report-rd.png"), (R.PLOT_CONVERGENCE, "report-convergence.png"),
                          (R.PLOT_SCHEDULE, "report-schedule.png")):
        small_png(report / plot, folder / picture, width=800)
    shutil.rmtree(raw, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", type=Path, default=REPO / "docs" / "tour.yaml")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the search runs (default: a temporary folder)")
    parser.add_argument("--shots", type=Path, default=None, help="write the docs' PNGs into this folder (docs/)")
    parser.add_argument("--require-browser", action="store_true", help="fail instead of skipping without Chromium")
    args = parser.parse_args(argv)
    executable = browser()
    if executable is None:
        print(f"SKIP: no Chromium ({', '.join(BROWSERS)}) on PATH; install it (Debian: apt-get install chromium)")
        return 1 if args.require_browser else 0
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="lic-search-ui-check-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    name, console = run_search(args.space.resolve(), workdir)
    runs, rate_points = trial_names(name, workdir)
    ui = Ui(name, workdir)
    try:
        print(f"lic-search ui printed: {ui.url}")
        for attempt in range(ATTEMPTS):  # a loaded machine: the server may answer after the render budget
            text = page_text(chromium(executable, ui.url, "--dump-dom"))
            failures = check(text, runs, rate_points)
            if not failures:
                break
        (workdir / "page.txt").write_text(text)
        if args.shots and not failures:
            shots(executable, ui, name, workdir, console, args.shots.resolve())
    finally:
        ui.close()
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"(the page's text after {ATTEMPTS} loads: {workdir / 'page.txt'})")
    if not failures:
        print(f"PASS: the printed URL opens on the runs table of search {name!r} in Model-training mode, grouped "
              f"by rate point ({', '.join(rate_points)}), all {len(runs)} trials listed "
              f"({time.monotonic() - started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
