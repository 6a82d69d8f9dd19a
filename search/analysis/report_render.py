"""Rendering a computed report: Markdown tables, PNG plots, report.json and the family curves.

:func:`search.analysis.report.compute_report` decides every number; this module only lays them out, so
what the Markdown says and what ``report.json`` holds cannot disagree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from search.analysis.bdrate import MIN_SHORTER_OVERLAP, quality_db
from search.analysis.curves import RATE_LIKELIHOOD, CurveError, RDCurve, save_curve
from search.analysis.families import Family
from search.bootstrap import interval_text
from search.space.strata import stratum_label
from search.tracking import names as T
from search.tracking import run_names
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
PLOT_SAVINGS = "rate_savings.png"


# ---------------------------------------------------------------------------------- formatting
def _fmt(value: Optional[float], spec: str = ".4g", suffix: str = "", prefix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{prefix}{value:{spec}}{suffix}"


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
OTHER = "other"  # trials outside every family the report ranks (stopped, errored): grey
STYLE = {True: "-", False: "--"}  # line style: AuxT solid, no AuxT dashed; the colour is the variant


def family_colours(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per family (variant), in table order: tab10, or tab20 beyond ten families."""
    from matplotlib import colormaps

    if len(labels) <= 10:
        colours: dict[str, Any] = {label: f"C{i}" for i, label in enumerate(labels)}
    else:
        colours = {label: colormaps["tab20"](i % 20) for i, label in enumerate(labels)}
    return {**colours, OTHER: "0.6"}


def _family_legend(ax, colours: dict[str, Any], auxt: dict[str, bool], shown: Sequence[str]) -> list[str]:
    """One legend entry per family drawn: its colour, its AuxT line style. Returns the entries."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[label], linestyle=STYLE[auxt.get(label, True)], marker=".",
                      label=label) for label in colours if label in shown]
    ax.legend(handles=handles, fontsize="small", title="solid: AuxT, dashed: no AuxT", title_fontsize="x-small")
    return [h.get_label() for h in handles]


def _legend_colours(ax) -> dict[str, str]:
    """The legend of ``ax`` as {entry: colour}: what report.json records so a reader (and a test) can
    check that every variant has its own colour."""
    from matplotlib.colors import to_hex

    legend = ax.get_legend()
    return {text.get_text(): to_hex(line.get_color()) for text, line in zip(legend.get_texts(), legend.legend_handles)}


def _fit(ax, xs: Sequence[float], ys: Sequence[float], margin: float = 0.08) -> None:
    """Axes limits from the search's own points (a published anchor far away is clipped, not in charge)."""
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        low, high = min(values), max(values)
        pad = (high - low) * margin or abs(high) * 0.05 or 0.1
        setter(low - pad, high + pad)


def _plot_rd(path: Path, labelled: Sequence[tuple[str, Family]], references: Sequence[RDCurve], metric: str,
             colours: dict[str, Any]) -> Optional[dict[str, str]]:
    curves = [(label, f, f.curve()) for label, f in labelled]
    curves = [(label, f, c) for label, f, c in curves if len(c) and (metric == "psnr" or c.ms_ssim is not None)]
    if not curves:
        return None
    figure, (ax,) = _figure()
    xs: list[float] = []
    ys: list[float] = []
    for label, family, curve in curves:
        quality = list(quality_db(curve.values(metric), metric))
        xs += curve.bpp
        ys += quality
        ax.plot(curve.bpp, quality, color=colours[label], marker="o", linestyle=STYLE[family.auxt],
                label=label)
    for anchor in references:
        if anchor.rate == RATE_LIKELIHOOD:
            continue  # the search's own baseline family, drawn above; the rest are published anchors
        try:
            values = anchor.values(metric)
        except CurveError:
            continue
        order = sorted(range(len(anchor)), key=lambda i: anchor.bpp[i])
        ax.plot([anchor.bpp[i] for i in order], quality_db([values[i] for i in order], metric), color="0.45",
                linestyle=":", marker=".", label=f"{anchor.name} (clipped to the search's range)")
    _fit(ax, xs, ys)
    ax.set_xlabel("bpp (training-time eval/bpp)")
    ax.set_ylabel("PSNR-RGB (dB)" if metric == "psnr" else "MS-SSIM-RGB (dB)")
    ax.set_title(f"R-D curves per variant ({'PSNR' if metric == 'psnr' else 'MS-SSIM'})", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return _legend_colours(ax)


def _plot_savings(path: Path, intervals: Optional[dict], colours: dict[str, Any]) -> Optional[dict[str, str]]:
    """Each variant's rate saving against the baseline with its 95 % interval as an error bar, letter groups
    beside the bars (variants sharing a letter cannot be told apart)."""
    rows = [(label, row) for label, row in (intervals or {}).get("variants", {}).items()
            if label != intervals["baseline"]]
    if not rows:
        return None
    figure, (ax,) = _figure(height=1.2 + 0.45 * len(rows))
    for y, (label, row) in enumerate(rows):
        colour = colours.get(label, "C0")
        ax.barh(y, row["estimate"], color=colour, alpha=0.6)
        ax.errorbar(row["estimate"], y, xerr=[[row["estimate"] - row["lower"]], [row["upper"] - row["estimate"]]],
                    color="black", capsize=4, linewidth=1)
        ax.annotate(f" {row['group']}", (max(row["upper"], 0.0), y), va="center", fontsize="small")
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"BD-rate vs {intervals['baseline']} (%, {intervals['metric']}; negative = fewer bits)")
    ax.set_title(f"Rate savings, {intervals['bootstrap']['level']:.0%} intervals "
                 f"({intervals['images']} images)", fontsize="medium")
    ax.grid(True, axis="x", alpha=0.3)
    figure.savefig(path, dpi=110)
    return {label: colours.get(label, "C0") for label, _ in rows}


def _log_y(ax) -> None:
    """Log y-axis labelled with plain numbers (R-D losses span a few octaves, rarely decades)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _trial_style(trial: "TrialRecord", family_of: dict[str, Optional[str]], colours: dict[str, Any]) -> dict:
    """A trial's line: its family's colour, AuxT line style; stopped or unfinished trials faint, with x marks."""
    finished = trial.status in (None, T.STATUS_COMPLETED)
    return {"color": colours.get(family_of.get(trial.trial_id) or OTHER, colours[OTHER]),
            "linestyle": STYLE[trial.auxt], "marker": "." if finished else "x", "alpha": 0.85 if finished else 0.35}


def _plot_convergence(path: Path, trials: Sequence["TrialRecord"], family_of: dict[str, Optional[str]],
                      colours: dict[str, Any], auxt: dict[str, bool]) -> Optional[dict[str, str]]:
    with_history = [t for t in trials if t.histories.get(M.EVAL_RD_LOSS)]
    if not with_history:
        return None
    lambdas = sorted({t.lmbda for t in with_history}, key=lambda v: (v is None, v or 0.0))
    ncols = min(3, len(lambdas))
    nrows = math.ceil(len(lambdas) / ncols)
    figure, axes = _figure(ncols, nrows, width=5.0, height=3.8)
    shown = {family_of.get(t.trial_id) or OTHER for t in with_history}
    for ax, lmbda in zip(axes, lambdas):
        panel = [t for t in with_history if t.lmbda == lmbda]
        positive = True
        for trial in panel:
            steps, values = zip(*trial.histories[M.EVAL_RD_LOSS])
            positive &= all(v > 0 for v in values)
            ax.plot(steps, values, **_trial_style(trial, family_of, colours))
        if positive:
            _log_y(ax)
        ax.set_title(f"λ = {lmbda:g}" if lmbda is not None else "λ unknown", fontsize="medium")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{M.EVAL_RD_LOSS}")
        ax.grid(True, alpha=0.3)
    _family_legend(axes[0], colours, auxt, sorted(shown))
    for ax in axes[len(lambdas):]:
        ax.set_visible(False)
    figure.suptitle("Eval R-D loss during training (faint, x: stopped or unfinished)", fontsize="medium")
    figure.savefig(path, dpi=110)
    return _legend_colours(axes[0])


def _plot_schedule(path: Path, schedules: Sequence[dict], colours: dict[str, Any],
                   auxt: dict[str, bool]) -> Optional[dict[str, str]]:
    """Learning rate (and, when any trial stages its crops, crop size) against iterations, one colour per
    family, drawn as steps (a step decay is a step, not a slope between two logged points)."""
    if not schedules:
        return None
    staged = any(s["crop_size"] for s in schedules)
    figure, axes = _figure(2 if staged else 1, 1, width=5.5, height=3.8)
    panels = [(axes[0], "lr", M.TRAIN_LR)] + ([(axes[1], "crop_size", M.TRAIN_CROP_SIZE)] if staged else [])
    for ax, key, metric in panels:
        for schedule in schedules:
            if schedule[key]:
                steps, values = zip(*schedule[key])
                finished = schedule["status"] in (None, T.STATUS_COMPLETED)
                ax.plot(steps, values, color=colours.get(schedule["family"] or OTHER, colours[OTHER]),
                        alpha=0.8 if finished else 0.35, drawstyle="steps-post", linestyle=STYLE[schedule["auxt"]])
        if key == "lr" and all(v > 0 for s in schedules for _, v in s["lr"]):
            _log_y(ax)
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
    _family_legend(axes[0], colours, auxt, {s["family"] or OTHER for s in schedules})
    figure.suptitle("Schedules per family (one line per trial)", fontsize="medium")
    figure.savefig(path, dpi=110)
    return _legend_colours(axes[0])


def _plot_energy(path: Path, trials: Sequence["TrialRecord"], family_of: dict[str, Optional[str]],
                 colours: dict[str, Any], auxt: dict[str, bool]) -> Optional[dict[str, str]]:
    panels = [(m, title) for m, title in ((M.EVAL_TOP10_ENERGY, "latent energy in the top 10% channels"),
                                          (M.EVAL_AUXT_ENERGY, "latent energy from the AuxT branch"))
              if any(t.histories.get(m) for t in trials)]
    if not panels:
        return None
    figure, axes = _figure(len(panels), 1, width=5.5, height=4.0)
    for ax, (metric, title) in zip(axes, panels):
        drawn = set()
        for trial in trials:
            history = trial.histories.get(metric)
            if history:
                steps, values = zip(*history)
                ax.plot(steps, values, **_trial_style(trial, family_of, colours))
                drawn.add(family_of.get(trial.trial_id) or OTHER)
        ax.set_title(f"share of {title}", fontsize="medium")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        _family_legend(ax, colours, auxt, drawn)
    figure.savefig(path, dpi=110)
    return _legend_colours(axes[0])


# ------------------------------------------------------------------------------------ tables
def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def _family_table(content: "ReportContent") -> str:
    references = content.reference_names
    header = ["variant" if content.search.variants else "family", "rank", "name", "AuxT", "points", "λ",
              *(run_names.label(k, content.varying) for k in content.varying), f"BD-rate vs {references[0]} (PSNR)"]
    if content.with_ms_ssim:
        header.append(f"BD-rate vs {references[0]} (MS-SSIM)")
    header += [f"BD-rate vs {r} (PSNR)" for r in references[1:]]
    uncertain = content.intervals is not None
    if uncertain:
        header += [f"rate saving vs {content.baseline_family} [95 % interval]", "group", "tied with", "seeds"]
    rows = []
    for family in content.families:
        def cell(key: str) -> str:
            if family["is_baseline"] and key.startswith(f"{references[0]} "):
                return "baseline"
            return _percent(family["bd_rate"][key]) if key in family["bd_rate"] else "-"

        cells = [cell(f"{references[0]} psnr")] + ([cell(f"{references[0]} ms-ssim")] if content.with_ms_ssim else [])
        cells += [cell(f"{r} psnr") for r in references[1:]]
        if uncertain:
            saving = ("baseline" if family["is_baseline"] else interval_text(family["interval"], unit=" %", digits=2)
                      if family["interval"] else f"n/a ({family['interval_note']})")
            cells += [saving, family["group"] or "-", ", ".join(family["tied_with"]) or "-",
                      str(family["seeds"] or "-")]
        rank = "baseline" if family["is_baseline"] else str(family["rank"]) if family["rank"] is not None else "-"
        rows.append([family["label"], rank, family["name"], "yes" if family["auxt"] else "no", str(family["points"]),
                     ", ".join(f"{l:g}" for l in family["lambdas"]) or "-",
                     *[family["params"].get(k, "-") for k in content.varying], *cells, "; ".join(family["notes"])])
    return _table(header + ["notes"], rows)


def _share(fraction: Optional[float], bound: bool) -> str:
    """Share of the no-AuxT iterations: ``≤ 25.0%`` when reached at the first evaluation (an upper bound)."""
    return _fmt(None if fraction is None else 100 * fraction, ".1f", "%", "≤ " if bound else "")


def _speedup(speedup: Optional[float], bound: bool) -> str:
    """``2.10×`` measured between evaluations, or ``≥ 4.00× (reached at the first evaluation)``: a lower bound."""
    if speedup is None:
        return "-"
    return f"≥ {speedup:.2f}× (reached at the first evaluation)" if bound else f"{speedup:.2f}×"


def _pair_table(content: "ReportContent") -> str:
    rows = []
    for pair in content.auxt_pairs:
        cells = [_percent(pair["bd_rate"][m]) if m in pair["bd_rate"] else "-" for m in ("psnr", "ms-ssim")]
        rows.append([f"{pair['auxt_family']} vs {pair['no_auxt_family']}", *cells,
                     _share(pair["fraction"], pair["bound"]), _speedup(pair["speedup"], pair["bound"]),
                     "; ".join(pair["notes"])])
    return _table(["AuxT vs no AuxT", "BD-rate (PSNR)", "BD-rate (MS-SSIM)", "share of iterations", "speed-up",
                   "notes"], rows)


def _speed_rows(content: "ReportContent") -> list[list[str]]:
    rows = []
    for s in (s for s in content.speed if s["lmbda"] is not None):
        bound = s["bound"]
        rows.append([f"{s['auxt_family']} vs {s['no_auxt_family']}", f"{s['lmbda']:g}", _fmt(s["auxt_final_loss"]),
                     _fmt(s["no_auxt_final_loss"]),
                     _fmt(s["auxt_iterations_to_no_auxt_final"], ".0f", "", "≤ " if bound else ""),
                     _fmt(s["no_auxt_iterations"], ".0f"), _share(s["fraction"], bound),
                     _speedup(s["speedup"], bound), _fmt(s["no_auxt_iterations_to_auxt_final"], ".0f")])
    return rows


def _speed_table(rows: list[list[str]]) -> str:
    return _table(["AuxT vs no AuxT", "λ", "AuxT final R-D loss", "no-AuxT final R-D loss",
                   "AuxT iterations to no-AuxT final loss", "no-AuxT iterations", "share", "speed-up",
                   "no-AuxT iterations to AuxT final loss"], rows)


def _best_table(content: "ReportContent") -> str:
    def lead(b: dict) -> str:
        runner = b.get("runner_up")
        if runner is None:
            return "-"
        return f"{runner['label']} ({runner['trial_id']}): {interval_text(runner['relative'])}"

    rows = [[stratum_label(b["stratum"]), b["label"], b["trial_id"], "yes" if b["auxt"] else "no",
             _fmt(b["value"]), _fmt(b["bpp"]), _fmt(b["psnr"], ".2f"), b["status"] or "-", str(b["of"]), lead(b),
             ", ".join(f"{g['label']} ({g['trial_id']})" for g in b.get("tied_with") or []) or "-"]
            for b in content.best]
    return _table(["rate point", "best", "trial", "AuxT", content.metric, "bpp", "PSNR", "status",
                   "trials compared", "runner-up: its difference [95 % interval]", "tied with the best"], rows)


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
def _reference_intro(content: "ReportContent") -> list[str]:
    """Which family is the baseline and why, and which images the curves come from (Figure 8's setting)."""
    images = sorted({f["images"] for f in content.families if f.get("images")})
    source = ("Curves are training-time evaluations (`eval/bpp`, a likelihood estimate) on "
              + ("; ".join(images) if images else "the trials' eval images (folder not readable here)")
              + ": comparable with each other, not with published curves measured on other images "
              "(those columns say \"not comparable\"); `lic-search eval` measures real bitstreams on Kodak.")
    if content.baseline_family:
        return [f"Each variant's BD-rate against the search's baseline **{content.baseline_family}** "
                f"({content.baseline_how}), as the AuxT paper's Figure 8 reports rate savings; "
                f"{', '.join(content.reference_names[1:]) or 'no published anchor'} as a second column. " + source,
                ""]
    return [f"No baseline family ({content.baseline_how}): BD-rates against the published anchor "
            f"{content.reference_names[0]}. " + source, ""]


def _uncertainty_lines(content: "ReportContent", plots: dict[str, Optional[dict[str, str]]]) -> list[str]:
    """What the interval columns mean, and the smallest difference this search resolves."""
    intervals = content.intervals
    if not intervals:
        return []
    lines = ["Rate saving: the BD-rate of each variant's mean curve against the baseline's, seed repeats folded into "
             "one variant (`seeds`), with its 95 % interval; `group`: a compact letter display, variants sharing a "
             "letter cannot be told apart (the interval of their difference contains 0), `tied with` names them. "
             + (f"**{intervals['resolution_text'][0].upper() + intervals['resolution_text'][1:]}.**"
                if intervals.get("resolution_text") else ""), ""]
    if plots.get(PLOT_SAVINGS):
        lines += [f"![Rate savings with intervals]({PLOT_SAVINGS})", ""]
    return lines


def _curve_file(label: str) -> str:
    """``A1 unconstrained OLP`` -> ``A1_unconstrained_OLP.json``: a file name any shell reads."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".json"


def _plots(content: "ReportContent", out: Path) -> dict[str, Optional[dict[str, str]]]:
    """Draw every plot; per file name its legend ({entry: colour}), None when there was nothing to draw."""
    labelled = [(content.labels[f.key], f) for f in content.ordered]
    colours = family_colours([label for label, _ in labelled])
    auxt = {label: family.auxt for label, family in labelled}
    plots = {name: _plot_rd(out / name, labelled, content.references, metric, colours)
             for name, metric in ((PLOT_RD_PSNR, "psnr"), (PLOT_RD_MS_SSIM, "ms-ssim"))}
    trials, family_of = content.search.trials, {t["trial_id"]: t["recipe"] for t in content.trials}
    plots[PLOT_CONVERGENCE] = _plot_convergence(out / PLOT_CONVERGENCE, trials, family_of, colours, auxt)
    plots[PLOT_ENERGY] = _plot_energy(out / PLOT_ENERGY, trials, family_of, colours, auxt)
    plots[PLOT_SCHEDULE] = _plot_schedule(out / PLOT_SCHEDULE, content.schedules, colours, auxt)
    plots[PLOT_SAVINGS] = _plot_savings(out / PLOT_SAVINGS, content.intervals, colours)
    return plots


def _markdown(content: "ReportContent", plots: dict[str, Optional[dict[str, str]]]) -> str:
    search = content.search
    used_statuses = "completed" + (" and stopped" if content.include_stopped else "")
    excluded = len(search.trials) - content.used
    method, reference = content.method, content.reference_names[0]
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
        f"The runner-up's difference is in % of the best's `{content.metric}`, paired over the eval images; a trial "
        "whose interval contains 0 is tied with the best: the images cannot tell them apart. Every interval of "
        f"this report: {content.bootstrap.describe()}.",
        "",
        "## Rate savings against the baseline" if content.baseline_family else "## Rate families and BD-rate",
        "",
        *_reference_intro(content),
        "A family is one training recipe at several R-D trade-offs λ (trials whose configs differ only in "
        "`loss.lmbda`); its final eval points form one R-D curve. BD-rate: average bitrate difference at equal "
        f"quality against the reference ({method} interpolation; negative = fewer bits), given only where the two "
        f"quality ranges share at least {MIN_SHORTER_OVERLAP:.0%} of the shorter one (else n/a, with the overlap). "
        f"Ranked by BD-rate against {reference} (PSNR); curves need at least 4 points; a family is never ranked "
        f"against itself. Each family's curve is in `curves/<family>.json` (CompressAI results format: "
        "`lic-search bd-rate curves/<family>.json`).",
        "",
        _family_table(content) if content.families else "_No completed trial has eval/bpp and eval/psnr yet._",
        "",
        *_uncertainty_lines(content, plots),
        *[f"**Warning:** {family['bunched']}.\n" for family in content.families if family.get("bunched")],
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
            "BD-rate of each AuxT family against its no-AuxT counterpart (its own reference: meaningful even when "
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
    files = [save_curve(curve, out / "curves" / _curve_file(label)) for label, curve in content.curves.items()]
    plots = _plots(content, out)
    files += [out / name for name, legend in plots.items() if legend is not None]
    markdown = out / REPORT_FILE
    markdown.write_text(_markdown(content, plots))
    data = {**content.data(), "plots": {name: name for name, legend in plots.items() if legend is not None},
            "legends": {name: legend for name, legend in plots.items() if legend is not None}}
    data_file = out / DATA_FILE
    data_file.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return markdown, [markdown, data_file, *files], data
