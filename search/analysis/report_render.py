"""Rendering a computed report: Markdown tables, PNG plots, report.json and the family curves.

:func:`search.analysis.report.compute_report` decides every number; this module only lays them out, so
what the Markdown says and what ``report.json`` holds cannot disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from search.analysis.bdrate import quality_db
from search.analysis.curves import CurveError, RDCurve, save_curve
from search.analysis.families import Family
from search.space.strata import stratum_label
from search.tracking import names as T
from trainables import metrics as M

if TYPE_CHECKING:
    from search.analysis.report import ReportContent, TrialRecord

REPORT_FILE = "report.md"
DATA_FILE = "report.json"
PLOT_RD_PSNR = "rd_psnr.png"
PLOT_RD_MS_SSIM = "rd_ms_ssim.png"
PLOT_CONVERGENCE = "convergence.png"
PLOT_ENERGY = "energy.png"
PLOT_SCHEDULE = "schedule.png"
AUXT_COLOURS = {True: "tab:red", False: "tab:blue"}


# ---------------------------------------------------------------------------------- formatting
def _fmt(value: Optional[float], spec: str = ".4g", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas: no display, no pyplot global state
    axes = figure.subplots(nrows, ncols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


# ------------------------------------------------------------------------------------- plots
def _plot_rd(path: Path, labelled: Sequence[tuple[str, Family]], anchors: Sequence[RDCurve], metric: str) -> bool:
    curves = [(label, f, f.curve()) for label, f in labelled]
    curves = [(label, f, c) for label, f, c in curves if len(c) and (metric == "psnr" or c.ms_ssim is not None)]
    if not curves:
        return False
    figure, (ax,) = _figure()
    for anchor in anchors:
        try:
            values = anchor.values(metric)
        except CurveError:
            continue
        order = sorted(range(len(anchor)), key=lambda i: anchor.bpp[i])
        ax.plot([anchor.bpp[i] for i in order], quality_db([values[i] for i in order], metric), color="0.45",
                linestyle=":", marker=".", label=f"{anchor.name} (anchor)")
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for colour, (label, family, curve) in zip(colours, curves):
        ax.plot(curve.bpp, quality_db(curve.values(metric), metric), color=colour, marker="o",
                linestyle="-" if family.auxt else "--", label=f"{label} ({'AuxT' if family.auxt else 'no AuxT'})")
    ax.set_xlabel("bpp")
    ax.set_ylabel("PSNR-RGB (dB)" if metric == "psnr" else "MS-SSIM-RGB (dB)")
    ax.set_title(f"R-D curves of the rate families ({'PSNR' if metric == 'psnr' else 'MS-SSIM'})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return True


def _log_y(ax) -> None:
    """Log y-axis labelled with plain numbers (R-D losses span a few octaves, rarely decades)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _auxt_legend(ax) -> None:
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color=AUXT_COLOURS[True], label="AuxT"),
                       Line2D([], [], color=AUXT_COLOURS[False], label="no AuxT")], fontsize="small")


def _plot_convergence(path: Path, trials: Sequence["TrialRecord"]) -> bool:
    with_history = [t for t in trials if t.histories.get(M.EVAL_RD_LOSS)]
    if not with_history:
        return False
    lambdas = sorted({t.lmbda for t in with_history}, key=lambda v: (v is None, v or 0.0))
    ncols = min(3, len(lambdas))
    nrows = math.ceil(len(lambdas) / ncols)
    figure, axes = _figure(ncols, nrows, width=5.0, height=3.8)
    for ax, lmbda in zip(axes, lambdas):
        panel = [t for t in with_history if t.lmbda == lmbda]
        positive = True
        for trial in panel:
            steps, values = zip(*trial.histories[M.EVAL_RD_LOSS])
            positive &= all(v > 0 for v in values)
            ax.plot(steps, values, color=AUXT_COLOURS[trial.auxt], alpha=0.85, marker=".",
                    linestyle="-" if trial.status in (None, T.STATUS_COMPLETED) else ":")
        if positive:
            _log_y(ax)
        ax.set_title(f"λ = {lmbda:g}" if lmbda is not None else "λ unknown")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{M.EVAL_RD_LOSS}")
        ax.grid(True, alpha=0.3)
        _auxt_legend(ax)
    for ax in axes[len(lambdas):]:
        ax.set_visible(False)
    figure.suptitle("Eval R-D loss during training\n(dotted: stopped or unfinished trials)")
    figure.savefig(path, dpi=110)
    return True


def _plot_schedule(path: Path, schedules: Sequence[dict]) -> bool:
    """Learning rate (and, when any trial stages its crops, crop size) against iterations, one
    colour per family: the shapes behind the bends of the convergence plot."""
    from matplotlib.lines import Line2D

    if not schedules:
        return False
    staged = any(s["crop_size"] for s in schedules)
    figure, axes = _figure(2 if staged else 1, 1, width=5.5, height=3.8)
    families = sorted({s["family"] or "no family" for s in schedules}, key=lambda f: (len(f), f))
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}
    panels = [(axes[0], "lr", M.TRAIN_LR)] + ([(axes[1], "crop_size", M.TRAIN_CROP_SIZE)] if staged else [])
    for ax, key, metric in panels:
        for schedule in schedules:
            if schedule[key]:
                steps, values = zip(*schedule[key])
                ax.plot(steps, values, color=colours[schedule["family"] or "no family"], alpha=0.8,
                        drawstyle="steps-post" if key == "crop_size" else "default", marker=".",
                        linestyle="-" if schedule["status"] in (None, T.STATUS_COMPLETED) else ":")
        if key == "lr" and all(v > 0 for s in schedules for _, v in s["lr"]):
            _log_y(ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    axes[0].legend(handles=[Line2D([], [], color=colours[f], label=f) for f in families], fontsize="small")
    figure.suptitle("Schedules per family (one line per trial; dotted: stopped or unfinished)")
    figure.savefig(path, dpi=110)
    return True


def _plot_energy(path: Path, trials: Sequence["TrialRecord"]) -> list[str]:
    panels = [(m, title) for m, title in ((M.EVAL_TOP10_ENERGY, "share of latent energy in the top 10% channels"),
                                          (M.EVAL_AUXT_ENERGY, "share of latent energy from the AuxT branch"))
              if any(t.histories.get(m) for t in trials)]
    if not panels:
        return []
    figure, axes = _figure(len(panels), 1, width=5.5, height=4.0)
    for ax, (metric, title) in zip(axes, panels):
        for trial in trials:
            history = trial.histories.get(metric)
            if history:
                steps, values = zip(*history)
                ax.plot(steps, values, color=AUXT_COLOURS[trial.auxt], alpha=0.8, marker=".")
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        _auxt_legend(ax)
    figure.savefig(path, dpi=110)
    return [m for m, _ in panels]


# ------------------------------------------------------------------------------------ tables
def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def _family_table(content: "ReportContent") -> str:
    anchors = content.anchor_names
    header = ["family", "name", "AuxT", "points", "λ", *content.varying,
              *[f"BD-rate vs {a} (PSNR)" for a in anchors]]
    if content.with_ms_ssim:
        header.append(f"BD-rate vs {anchors[0]} (MS-SSIM)")
    rows = []
    for family in content.families:
        cells = [_percent(family["bd_rate"].get(f"{a} psnr")) for a in anchors]
        if content.with_ms_ssim:
            key = f"{anchors[0]} ms-ssim"
            cells.append(_percent(family["bd_rate"][key]) if key in family["bd_rate"] else "-")
        rows.append([family["label"], family["name"], "yes" if family["auxt"] else "no", str(family["points"]),
                     ", ".join(f"{l:g}" for l in family["lambdas"]) or "-",
                     *[family["params"].get(k, "-") for k in content.varying], *cells, "; ".join(family["notes"])])
    return _table(header + ["notes"], rows)


def _pair_table(content: "ReportContent") -> str:
    rows = []
    for pair in content.auxt_pairs:
        cells = [_percent(pair["bd_rate"][m]) if m in pair["bd_rate"] else "-" for m in ("psnr", "ms-ssim")]
        fraction = pair["fraction"]
        rows.append([f"{pair['auxt_family']} vs {pair['no_auxt_family']}", *cells,
                     _fmt(None if fraction is None else 100 * fraction, ".1f", "%"), _fmt(pair["speedup"], ".2f", "×"),
                     "; ".join(pair["notes"])])
    return _table(["AuxT vs no AuxT", "BD-rate (PSNR)", "BD-rate (MS-SSIM)", "share of iterations", "speed-up",
                   "notes"], rows)


def _speed_rows(content: "ReportContent") -> list[list[str]]:
    rows = []
    for s in (s for s in content.speed if s["lmbda"] is not None):
        fraction = s["fraction"]
        rows.append([f"{s['auxt_family']} vs {s['no_auxt_family']}", f"{s['lmbda']:g}", _fmt(s["auxt_final_loss"]),
                     _fmt(s["no_auxt_final_loss"]), _fmt(s["auxt_iterations_to_no_auxt_final"], ".0f"),
                     _fmt(s["no_auxt_iterations"], ".0f"), _fmt(None if fraction is None else 100 * fraction, ".1f", "%"),
                     _fmt(s["speedup"], ".2f", "×"), _fmt(s["no_auxt_iterations_to_auxt_final"], ".0f")])
    return rows


def _speed_table(rows: list[list[str]]) -> str:
    return _table(["AuxT vs no AuxT", "λ", "AuxT final R-D loss", "no-AuxT final R-D loss",
                   "AuxT iterations to no-AuxT final loss", "no-AuxT iterations", "share", "speed-up",
                   "no-AuxT iterations to AuxT final loss"], rows)


def _best_table(content: "ReportContent") -> str:
    rows = [[stratum_label(b["stratum"]), b["trial_id"], b["family"] or "-", "yes" if b["auxt"] else "no",
             _fmt(b["value"]), _fmt(b["bpp"]), _fmt(b["psnr"], ".2f"), b["status"] or "-", str(b["of"])]
            for b in content.best]
    return _table(["rate point", "best trial", "family", "AuxT", content.metric, "bpp", "PSNR", "status",
                   "trials compared"], rows)


def _lof_section(content: "ReportContent") -> list[str]:
    """Latent overfitting (`lic-search eval --search`): each setting against plain encoding (lof0)."""
    def bd(row: dict) -> str:
        return _percent(row["bd_rate"]) if row["bd_rate"] is not None else row["note"] or "n/a (< 4 rate points)"

    rows = [[r["setting"], str(r["trials"]), bd(r),
             _fmt(r["rate_change"], "+.2f", "%"), _fmt(r["psnr_change"], "+.3f", " dB"),
             _fmt(r["encode_ratio"], ".1f", "×")] for r in content.lof]
    return ["## Latent overfitting", "",
            "Encode-time refinement of each image's latents (`lic-search eval --search`, metrics `lof/<setting>/*` "
            "on the best trial of each rate point), against the same trials coded without it (`lof0`, real "
            "bitstreams). BD-rate (PSNR) when at least 4 rate points; the mean bpp and PSNR changes always; "
            "decoding is unchanged, encoding costs the time ratio.", "",
            _table(["setting", "rate points", "BD-rate vs lof0", "mean bpp change", "mean PSNR change",
                    "encode time ×"], rows), ""]


def _trial_table(content: "ReportContent") -> str:
    """One row per trial; an ``init`` column (scratch, or the weights it started from) when any was warm-started."""
    warm = any(t.get("init", "scratch") != "scratch" for t in content.trials)
    rows = [[t["trial_id"], t["family"] or "-", "yes" if t["auxt"] else "no", _fmt(t["lmbda"], "g"),
             *([t.get("init", "scratch")] if warm else []),
             t["status"] or "-", _fmt(t["iterations"], "d"), _fmt(t["final"].get(M.EVAL_BPP)),
             _fmt(t["final"].get(M.EVAL_PSNR), ".2f"), _fmt(t["final"].get(M.EVAL_MS_SSIM), ".4f"),
             _fmt(t["final"].get(M.EVAL_RD_LOSS))] for t in content.trials]
    return _table(["trial", "family", "AuxT", "λ", *(["init"] if warm else []), "status", "iterations", "bpp",
                   "PSNR", "MS-SSIM", M.EVAL_RD_LOSS], rows)


# ------------------------------------------------------------------------------------ render
def _plots(content: "ReportContent", out: Path) -> dict[str, Optional[str]]:
    plots: dict[str, Optional[str]] = {}
    labelled = [(content.labels[f.key], f) for f in content.ordered]
    for name, metric in ((PLOT_RD_PSNR, "psnr"), (PLOT_RD_MS_SSIM, "ms-ssim")):
        plots[name] = name if _plot_rd(out / name, labelled, content.anchors, metric) else None
    trials = content.search.trials
    plots[PLOT_CONVERGENCE] = PLOT_CONVERGENCE if _plot_convergence(out / PLOT_CONVERGENCE, trials) else None
    plots[PLOT_ENERGY] = PLOT_ENERGY if _plot_energy(out / PLOT_ENERGY, trials) else None
    plots[PLOT_SCHEDULE] = PLOT_SCHEDULE if _plot_schedule(out / PLOT_SCHEDULE, content.schedules) else None
    return plots


def _markdown(content: "ReportContent", plots: dict[str, Optional[str]]) -> str:
    search = content.search
    used_statuses = "completed" + (" and stopped" if content.include_stopped else "")
    excluded = len(search.trials) - content.used
    method, anchor = content.method, content.anchor_names[0]
    strata = ", ".join(f"`{k}`" for k in content.stratify_by) or "nothing (every trial against every other)"
    lines = [
        f"# Search report: {search.experiment}",
        "",
        f"Generated {content.generated} from MLflow `{search.tracking_uri}`"
        + (f", parent run `{search.parent_run_id}`." if search.parent_run_id else ".")
        + (f" {content.selection}." if content.selection else ""),
        f"{len(search.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(content.counts.items())) + ". "
        f"Rate families and speed use the {used_statuses} trials"
        + (f" ({excluded} other trials appear only in the convergence plot and the trial table)." if excluded else "."),
        "",
        "## Best trial per rate point",
        "",
        f"Trials ranked by their final `{content.metric}` ({content.mode}) only against trials of the same rate "
        f"point (equal {strata}): R-D losses at different λ are not comparable.",
        "",
        _best_table(content) if content.best else f"_No trial has a finite {content.metric} yet._",
        "",
        "## Rate families and BD-rate",
        "",
        "A family is one training recipe at several R-D trade-offs λ (trials whose configs differ only in "
        "`loss.lmbda`); its final eval points form one R-D curve. BD-rate: average bitrate difference at equal "
        f"quality against the anchor ({method} interpolation; negative = fewer bits). Families are ranked by "
        f"BD-rate against {anchor} (PSNR); curves need at least 4 points. Each family's curve is in "
        "`curves/<family>.json` (CompressAI results format: `lic-search bd-rate curves/F1.json`).",
        "",
        _family_table(content) if content.families else "_No completed trial has eval/bpp and eval/psnr yet._",
        "",
    ]
    if plots[PLOT_RD_PSNR]:
        lines += [f"![R-D curves, PSNR]({PLOT_RD_PSNR})", ""]
    if plots[PLOT_RD_MS_SSIM]:
        lines += [f"![R-D curves, MS-SSIM]({PLOT_RD_MS_SSIM})", ""]
    lines += [
        "## Training speed: AuxT against no AuxT",
        "",
        "For each pair of families that differ only in `model.auxt.*`, matched λ by λ: the iterations the AuxT "
        "trial needs to reach the no-AuxT trial's final eval R-D loss (linear interpolation between evaluations), "
        "as a share of the no-AuxT trial's iterations. 50% = 2× faster, the paper's claim (AuxT, ICLR 2025, "
        "Figure 1b and Table 1). The family summary is the geometric mean over λ, given only when every λ "
        "reached the other's loss.",
        "",
    ]
    if content.auxt_pairs:
        speed_rows = _speed_rows(content)
        lines += [
            "BD-rate of each AuxT family against its no-AuxT counterpart (its own anchor: meaningful even when "
            "short runs are far from VTM), and the speed-up summarised over λ:",
            "",
            _pair_table(content),
            "",
            "Per λ:",
            "",
            _speed_table(speed_rows) if speed_rows else "_No shared λ with eval R-D loss histories._",
            "",
        ]
    else:
        lines += ["_No pair of families differing only in the AuxT settings (`model.auxt.*`)._", ""]
    if plots[PLOT_CONVERGENCE]:
        lines += [f"![Eval R-D loss against iterations]({PLOT_CONVERGENCE})", ""]
    if plots[PLOT_SCHEDULE]:
        lines += [f"Learning rate (`{M.TRAIN_LR}`, and the training crop `{M.TRAIN_CROP_SIZE}` where it is "
                  "staged) against iterations, coloured by family: where the schedule decays or the crops grow, "
                  "the curves above bend.", "", f"![Schedules against iterations]({PLOT_SCHEDULE})", ""]
    if content.lof:
        lines += _lof_section(content)
    lines += [
        "## Energy compaction during training",
        "",
        f"`{M.EVAL_TOP10_ENERGY}`: share of latent energy in the 10% highest-energy channels (paper Figure 1a, "
        f"Figure 2); `{M.EVAL_AUXT_ENERGY}`: share of the latent energy coming from the AuxT branch (Figure 6b). "
        "AuxT is meant to raise the first faster.",
        "",
        f"![Energy telemetry]({PLOT_ENERGY})" if plots[PLOT_ENERGY] else "_No trial reported energy metrics._",
        "",
        "## Trials",
        "",
        _trial_table(content),
        "",
    ]
    return "\n".join(lines)


def render_report(content: "ReportContent", out: Path) -> tuple[Path, list[Path], dict[str, Any]]:
    """Write report.md, the plots, report.json and ``curves/<family>.json`` into ``out``.

    Returns the Markdown file, every file written, and the JSON data."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [save_curve(curve, out / "curves" / f"{label}.json") for label, curve in content.curves.items()]
    plots = _plots(content, out)
    files += [out / p for p in plots.values() if p]
    markdown = out / REPORT_FILE
    markdown.write_text(_markdown(content, plots))
    data = {**content.data(), "plots": {k: v for k, v in plots.items() if v}}
    data_file = out / DATA_FILE
    data_file.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return markdown, [markdown, data_file, *files], data
