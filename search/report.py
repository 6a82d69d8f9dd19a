"""`lic-search report`: a search's R-D, convergence and energy results as Markdown + PNG.

An ablation is answered by BD-rate of rate families and by convergence curves (the AuxT
paper's Table 1 and Figure 1), not by one trial's training loss. The report reads the
search back from MLflow (layout in :mod:`search.mlflow_names`), so it works for any search,
finished or not, and attaches itself to the search's parent run.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from search import mlflow_names as T
from search.bdrate import bd_rate, quality_db
from search.curves import CurveError, RDCurve, load_curve, save_curve, shipped_anchor
from search.families import (
    AUXT_ENABLED_KEY,
    Family,
    FamilySpeed,
    TrialPoint,
    auxt_enabled,
    auxt_pairs,
    distinguishing_params,
    family_key,
    family_speed,
    group_families,
    rank_families,
)
from trainables import metrics as M
from trainables.errors import LicSearchError

REPORT_FILE = "report.md"
DATA_FILE = "report.json"
ARTIFACT_PATH = "report"
PLOT_RD_PSNR = "rd_psnr.png"
PLOT_RD_MS_SSIM = "rd_ms_ssim.png"
PLOT_CONVERGENCE = "convergence.png"
PLOT_ENERGY = "energy.png"

HISTORY_METRICS = (M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR, M.EVAL_MS_SSIM, M.EVAL_TOP10_ENERGY,
                   M.EVAL_AUXT_ENERGY)
AUXT_COLOURS = {True: "tab:red", False: "tab:blue"}


# ------------------------------------------------------------------------------- reading MLflow
@dataclass
class TrialRecord:
    """One trial run as the report needs it."""

    run_id: str
    trial_id: str
    status: Optional[str]
    params: dict[str, str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]

    def final(self, metric: str) -> Optional[float]:
        history = self.histories.get(metric) or []
        return history[-1][1] if history else None

    @property
    def iterations(self) -> Optional[int]:
        steps = [h[-1][0] for h in self.histories.values() if h]
        return max(steps) if steps else None

    @property
    def auxt(self) -> bool:
        return auxt_enabled(self.params)

    @property
    def lmbda(self) -> Optional[float]:
        return self.point().lmbda

    def point(self) -> TrialPoint:
        return TrialPoint(self.trial_id, dict(self.params), bpp=self.final(M.EVAL_BPP), psnr=self.final(M.EVAL_PSNR),
                          ms_ssim=self.final(M.EVAL_MS_SSIM),
                          rd_loss_history=list(self.histories.get(M.EVAL_RD_LOSS, [])))


@dataclass
class SearchRecord:
    experiment: str
    tracking_uri: str
    parent_run_id: Optional[str]
    trials: list[TrialRecord]


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    by_step: dict[int, float] = {}
    for entry in sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp)):
        by_step[int(entry.step)] = float(entry.value)  # a re-logged step keeps its latest value
    return sorted(by_step.items())


def load_search(experiment: str, tracking_uri: Optional[str] = None) -> SearchRecord:
    """Read the trial runs (params, stepped eval metrics) and the parent run of a search."""
    from search import tracking
    from search.queries import trial_runs

    uri = tracking_uri or tracking.default_tracking_uri()
    runs = trial_runs(experiment, uri)
    if not runs:
        raise LicSearchError(f"MLflow experiment {experiment!r} at {uri} has no trial runs "
                             f"(runs tagged {T.TAG_ROLE}={T.ROLE_TRIAL}); has the search started?")
    client = tracking.client_for(uri)
    trials = []
    for run in runs:
        tags = run.data.tags
        trials.append(TrialRecord(
            run_id=run.info.run_id,
            trial_id=tags.get(T.TAG_TRIAL_ID) or run.info.run_name or run.info.run_id,
            status=tags.get(T.TAG_STATUS),
            params=dict(run.data.params),
            histories={m: _history(client, run.info.run_id, m) for m in HISTORY_METRICS},
        ))
    trials.sort(key=lambda t: t.trial_id)
    experiment_id = runs[0].info.experiment_id
    parents = client.search_runs([experiment_id], filter_string=f"tags.`{T.TAG_ROLE}` = '{T.ROLE_SEARCH}'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    return SearchRecord(experiment, uri, parents[0].info.run_id if parents else None, trials)


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


def _plot_convergence(path: Path, trials: Sequence[TrialRecord]) -> bool:
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


def _plot_energy(path: Path, trials: Sequence[TrialRecord]) -> list[str]:
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


# ------------------------------------------------------------------------------------ report
@dataclass
class Report:
    folder: Path
    markdown: Path
    files: list[Path]
    data: dict[str, Any]
    attached_to: Optional[str] = None


def _family_statuses(include_stopped: bool) -> set[Optional[str]]:
    statuses: set[Optional[str]] = {T.STATUS_COMPLETED, None}
    if include_stopped:
        statuses.add(T.STATUS_STOPPED)
    return statuses


def _labelled_curve(family: Family, label: str) -> RDCurve:
    curve = family.curve(name=label)
    curve.source = label
    return curve


def _bd_cell(curve: RDCurve, anchor: RDCurve, metric: str, method: str) -> tuple[str, Optional[float], Optional[str]]:
    try:
        value = bd_rate(curve, anchor, metric, method).bd_rate
        return f"{value:+.2f}%", value, None
    except CurveError as error:
        text = str(error)
        pair, own = f"{curve.source} and {anchor.source}: ", f"{curve.source}: "
        if text.startswith(pair):
            text = f"vs {anchor.name}: {text[len(pair):]}"
        elif text.startswith(own):
            text = text[len(own):]
        return "n/a", None, text


def build_report(search: SearchRecord, out: Path, anchors: Sequence[RDCurve] = (), include_stopped: bool = False,
                 method: str = "pchip") -> Report:
    """Write report.md, its PNG plots, report.json and the family curves into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    anchors = list(anchors) or [load_curve(shipped_anchor())]
    files: list[Path] = []

    statuses = _family_statuses(include_stopped)
    used = [t for t in search.trials if t.status in statuses]
    families = group_families(t.point() for t in used)
    ranking = rank_families(families, anchors[0], "psnr", method)
    labels = {entry.family.key: f"F{i + 1}" for i, entry in enumerate(ranking)}
    ordered = [entry.family for entry in ranking]
    differ = distinguishing_params(ordered)
    varying = sorted({k for params in differ.values() for k in params} - {AUXT_ENABLED_KEY})  # own column
    with_ms_ssim = any(f.curve().ms_ssim is not None for f in ordered)

    # --- families and BD-rate
    family_rows, family_data = [], []
    for entry in ranking:
        family = entry.family
        label = labels[family.key]
        curve = _labelled_curve(family, label)
        if len(curve):
            named = family.curve(name=f"{search.experiment} {label}")
            files.append(save_curve(named, out / "curves" / f"{label}.json"))
        cells, bd = [], {}
        reasons = []
        for anchor in anchors:
            text, value, reason = _bd_cell(curve, anchor, "psnr", method)
            cells.append(text)
            bd[f"{anchor.name} psnr"] = value
            if reason:
                reasons.append(reason)
        if with_ms_ssim and curve.ms_ssim is None:
            cells.append("-")
        elif with_ms_ssim:
            text, value, reason = _bd_cell(curve, anchors[0], "ms-ssim", method)
            cells.append(text)
            bd[f"{anchors[0].name} ms-ssim"] = value
            if reason and reason not in reasons:
                reasons.append(reason)
        lambdas = [l for l in family.lambdas if l is not None]
        family_rows.append([label, "yes" if family.auxt else "no", str(len(curve)),
                            ", ".join(f"{l:g}" for l in lambdas) or "-",
                            *[differ[family.key].get(k, "-") for k in varying], *cells,
                            "; ".join(dict.fromkeys(reasons)) or ""])
        family_data.append({"label": label, "key": family.key, "auxt": family.auxt, "points": len(curve),
                            "lambdas": lambdas, "trials": [t.trial_id for t in family.trials],
                            "params": differ[family.key], "bd_rate": bd, "rank": entry.rank,
                            "curve": curve.to_dict()["results"] if len(curve) else None,
                            "notes": list(dict.fromkeys(reasons))})
    bd_header = [f"BD-rate vs {a.name} (PSNR)" for a in anchors]
    if with_ms_ssim:
        bd_header.append(f"BD-rate vs {anchors[0].name} (MS-SSIM)")
    family_table = _table(["family", "AuxT", "points", "λ", *varying, *bd_header, "notes"], family_rows)

    # --- training speed
    speed_rows, speed_data = [], []
    pair_rows, pair_data = [], []
    for with_auxt, without in auxt_pairs(ordered):
        speed: FamilySpeed = family_speed(with_auxt, without)
        pair = f"{labels[with_auxt.key]} vs {labels[without.key]}"
        curve_on = _labelled_curve(with_auxt, labels[with_auxt.key])
        curve_off = _labelled_curve(without, labels[without.key])
        pair_cells, pair_bd, pair_notes = [], {}, []
        for metric in ("psnr", "ms-ssim"):
            if metric == "ms-ssim" and (curve_on.ms_ssim is None or curve_off.ms_ssim is None):
                pair_cells.append("-")
                continue
            text, value, reason = _bd_cell(curve_on, curve_off, metric, method)
            pair_cells.append(text)
            pair_bd[metric] = value
            if reason:
                pair_notes.append(reason)
        pair_rows.append([pair, *pair_cells, _fmt(None if speed.fraction is None else 100 * speed.fraction, ".1f", "%"),
                          _fmt(speed.speedup, ".2f", "×"), "; ".join(dict.fromkeys(pair_notes))])
        pair_data.append({"auxt_family": labels[with_auxt.key], "no_auxt_family": labels[without.key],
                          "bd_rate": pair_bd, "fraction": speed.fraction, "speedup": speed.speedup,
                          "notes": list(dict.fromkeys(pair_notes))})
        for lmbda, result in speed.per_lambda.items():
            speed_rows.append([pair, f"{lmbda:g}", _fmt(result.test_final_loss), _fmt(result.anchor_final_loss),
                               _fmt(result.test_reaches_anchor_final, ".0f"), _fmt(result.anchor_iterations, ".0f"),
                               _fmt(None if result.fraction is None else 100 * result.fraction, ".1f", "%"),
                               _fmt(result.speedup, ".2f", "×"), _fmt(result.anchor_reaches_test_final, ".0f")])
            speed_data.append({"auxt_family": labels[with_auxt.key], "no_auxt_family": labels[without.key],
                               "lmbda": lmbda, "auxt_final_loss": result.test_final_loss,
                               "no_auxt_final_loss": result.anchor_final_loss,
                               "auxt_iterations_to_no_auxt_final": result.test_reaches_anchor_final,
                               "no_auxt_iterations": result.anchor_iterations,
                               "no_auxt_iterations_to_auxt_final": result.anchor_reaches_test_final,
                               "fraction": result.fraction, "speedup": result.speedup})
        if speed.per_lambda:
            speed_data.append({"auxt_family": labels[with_auxt.key], "no_auxt_family": labels[without.key],
                               "lmbda": None, "fraction": speed.fraction, "speedup": speed.speedup})
    pair_table = _table(["AuxT vs no AuxT", "BD-rate (PSNR)", "BD-rate (MS-SSIM)", "share of iterations",
                         "speed-up", "notes"], pair_rows)
    speed_table = _table(["AuxT vs no AuxT", "λ", "AuxT final R-D loss", "no-AuxT final R-D loss",
                          "AuxT iterations to no-AuxT final loss", "no-AuxT iterations", "share", "speed-up",
                          "no-AuxT iterations to AuxT final loss"], speed_rows)

    # --- plots
    plots: dict[str, Optional[str]] = {}
    labelled = [(labels[f.key], f) for f in ordered]
    for name, metric in ((PLOT_RD_PSNR, "psnr"), (PLOT_RD_MS_SSIM, "ms-ssim")):
        plots[name] = name if _plot_rd(out / name, labelled, anchors, metric) else None
    plots[PLOT_CONVERGENCE] = PLOT_CONVERGENCE if _plot_convergence(out / PLOT_CONVERGENCE, search.trials) else None
    energy_metrics = _plot_energy(out / PLOT_ENERGY, search.trials)
    plots[PLOT_ENERGY] = PLOT_ENERGY if energy_metrics else None
    files += [out / p for p in plots.values() if p]

    # --- trials
    trial_rows, trial_data = [], []
    family_of = {t.trial_id: labels.get(family_key(t.params)) for t in used}
    for trial in search.trials:
        label = family_of.get(trial.trial_id) or "-"
        trial_rows.append([trial.trial_id, label, "yes" if trial.auxt else "no", _fmt(trial.lmbda, "g"),
                           trial.status or "-", _fmt(trial.iterations, "d"), _fmt(trial.final(M.EVAL_BPP)),
                           _fmt(trial.final(M.EVAL_PSNR), ".2f"), _fmt(trial.final(M.EVAL_MS_SSIM), ".4f"),
                           _fmt(trial.final(M.EVAL_RD_LOSS))])
        trial_data.append({"trial_id": trial.trial_id, "run_id": trial.run_id, "family": family_of.get(trial.trial_id),
                           "auxt": trial.auxt, "lmbda": trial.lmbda, "status": trial.status,
                           "iterations": trial.iterations,
                           "final": {m: trial.final(m) for m in HISTORY_METRICS if trial.final(m) is not None}})
    trial_table = _table(["trial", "family", "AuxT", "λ", "status", "iterations", "bpp", "PSNR", "MS-SSIM",
                          M.EVAL_RD_LOSS], trial_rows)

    counts: dict[str, int] = {}
    for trial in search.trials:
        counts[trial.status or "unknown"] = counts.get(trial.status or "unknown", 0) + 1
    used_statuses = "completed" + (" and stopped" if include_stopped else "")
    excluded = len(search.trials) - len(used)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    lines = [
        f"# Search report: {search.experiment}",
        "",
        f"Generated {now} from MLflow `{search.tracking_uri}`"
        + (f", parent run `{search.parent_run_id}`." if search.parent_run_id else "."),
        f"{len(search.trials)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ". "
        f"Rate families and speed use the {used_statuses} trials"
        + (f" ({excluded} other trials appear only in the convergence plot and the trial table)." if excluded else "."),
        "",
        "## Rate families and BD-rate",
        "",
        "A family is one training recipe at several R-D trade-offs λ (trials whose configs differ only in "
        "`loss.lmbda`); its final eval points form one R-D curve. BD-rate: average bitrate difference at equal "
        f"quality against the anchor ({method} interpolation; negative = fewer bits). Families are ranked by "
        f"BD-rate against {anchors[0].name} (PSNR); curves need at least 4 points. Each family's curve is in "
        "`curves/<family>.json` (CompressAI results format: `lic-search bd-rate curves/F1.json`).",
        "",
        family_table if family_rows else "_No completed trial has eval/bpp and eval/psnr yet._",
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
    if pair_rows:
        lines += [
            "BD-rate of each AuxT family against its no-AuxT counterpart (its own anchor: meaningful even when "
            "short runs are far from VTM), and the speed-up summarised over λ:",
            "",
            pair_table,
            "",
            "Per λ:",
            "",
            speed_table if speed_rows else "_No shared λ with eval R-D loss histories._",
            "",
        ]
    else:
        lines += ["_No pair of families differing only in the AuxT settings (`model.auxt.*`)._", ""]
    if plots[PLOT_CONVERGENCE]:
        lines += [f"![Eval R-D loss against iterations]({PLOT_CONVERGENCE})", ""]
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
        trial_table,
        "",
    ]
    markdown = out / REPORT_FILE
    markdown.write_text("\n".join(lines))
    data = {"experiment": search.experiment, "tracking_uri": search.tracking_uri,
            "parent_run_id": search.parent_run_id, "generated": now, "method": method,
            "anchors": [a.name for a in anchors], "families": family_data, "auxt_pairs": pair_data,
            "speed": speed_data,
            "trials": trial_data, "plots": {k: v for k, v in plots.items() if v}}
    data_file = out / DATA_FILE
    data_file.write_text(json.dumps(data, indent=2) + "\n")
    return Report(out, markdown, [markdown, data_file, *files], data)


def generate_report(experiment: str, tracking_uri: Optional[str] = None, out: Optional[Path] = None,
                    anchor_files: Sequence[Path] = (), include_stopped: bool = False, method: str = "pchip",
                    attach: bool = True) -> Report:
    """Read the search from MLflow, write the report folder and attach it to the parent run."""
    anchors = [load_curve(shipped_anchor())] + [load_curve(p) for p in anchor_files]
    search = load_search(experiment, tracking_uri)
    folder = Path(out) if out is not None else Path("reports") / _safe_name(experiment)
    report = build_report(search, folder, anchors, include_stopped=include_stopped, method=method)
    if attach and search.parent_run_id:
        from search import tracking
        from search.errors import TrackingError

        try:
            tracking.client_for(search.tracking_uri).log_artifacts(search.parent_run_id, str(folder),
                                                                   artifact_path=ARTIFACT_PATH)
        except Exception as error:  # the files are written; say why they are not in MLflow
            raise TrackingError(f"report written to {folder} but not attached to parent run "
                                f"{search.parent_run_id}: {error.__class__.__name__}: {error}") from None
        report.attached_to = search.parent_run_id
    return report


def rank_experiment_families(experiment: str, tracking_uri: Optional[str] = None,
                             anchor_file: Optional[Path] = None, metric: str = "psnr", method: str = "pchip",
                             include_stopped: bool = False) -> list[dict[str, Any]]:
    """Rate families of a search ranked by BD-rate (for ``lic-search best --by family``).

    One JSON-ready row per family, best first; families without a BD-rate (fewer than 4
    points, no overlap with the anchor) come last with ``bd_rate`` None and a ``reason``.
    """
    anchor = load_curve(anchor_file if anchor_file is not None else shipped_anchor())
    search = load_search(experiment, tracking_uri)
    statuses = _family_statuses(include_stopped)
    families = group_families(t.point() for t in search.trials if t.status in statuses)
    ranking = rank_families(families, anchor, metric, method)
    differ = distinguishing_params([entry.family for entry in ranking])
    return [{"rank": entry.rank, "family": entry.family.key, "auxt": entry.family.auxt,
             "bd_rate": entry.bd_rate, "anchor": anchor.name, "metric": metric, "method": method,
             "reason": entry.reason, "points": len(entry.family.curve()),
             "lambdas": [l for l in entry.family.lambdas if l is not None],
             "trials": [t.trial_id for t in entry.family.trials], "params": differ[entry.family.key]}
            for entry in ranking]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "search"


__all__ = ["TrialRecord", "SearchRecord", "Report", "load_search", "build_report", "generate_report",
           "rank_experiment_families",
           "REPORT_FILE", "DATA_FILE", "ARTIFACT_PATH"]
