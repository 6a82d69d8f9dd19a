"""`lic-search report`: a search's R-D, convergence and energy results as Markdown + PNG.

An ablation is answered by BD-rate of rate families, by the best trial of each rate point and
by convergence curves (the AuxT paper's Table 1 and Figure 1), not by one trial's training
loss. The report reads one search back from MLflow (layout in :mod:`search.tracking.names`), so
it works for any search, finished or not, and attaches itself to the search's parent run.
:func:`compute_report` decides every number; :mod:`search.analysis.report_render` lays them out.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from search.analysis.bdrate import MIN_SHORTER_OVERLAP, bd_rate
from search.analysis.bunching import family_warnings
from search.analysis.curves import RATE_LIKELIHOOD, CurveError, RDCurve, load_curve, shipped_anchor
from search.analysis.families import (
    baseline_family,
    other_images,
    Family,
    FamilyRank,
    FamilySpeed,
    TrialPoint,
    auxt_pairs,
    distinguishing_params,
    family_speed,
    group_families,
    rank_families,
    short_reason,
)
from search.analysis.intervals import BDIntervals, family_intervals
from search.bootstrap import Bootstrap, Measured, leader_gaps
from search.analysis.lof_sweep import lof_summary
from search.analysis.report_render import DATA_FILE, REPORT_FILE, render_report
from search.errors import TrackingError
from search.experiment.state import STATE_FILE, SearchState
from search.experiment.store import ExperimentStore
from search.space.sections import DEFAULT_STRATIFY_BY, default_mode
from search.space.strata import (
    AUXT_ENABLED_KEY,
    auxt_enabled,
    family_key,
    finite,
    rank_within_strata,
    stratum_of,
    typed_params,
)
from search.tracking import client as tracking
from search.tracking import journal as J
from search.tracking import names as T
from search.tracking import run_names
from search.tracking import session as tracking_session
from search.tracking.queries import per_image_table, select_search, trial_runs
from trainables import metrics as M
from trainables.metrics import PerImage
from trainables.errors import LicSearchError

ARTIFACT_PATH = "report"
HISTORY_METRICS = (M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR, M.EVAL_MS_SSIM, M.EVAL_TOP10_ENERGY,
                   M.EVAL_AUXT_ENERGY)
#: Schedule telemetry, plotted beside the convergence curves so a reader sees why they bend where
#: they bend (train/crop_size exists only for trials with a data.crop_schedule).
SCHEDULE_METRICS = (M.TRAIN_LR, M.TRAIN_CROP_SIZE)


# ------------------------------------------------------------------------------- reading MLflow
@dataclass
class TrialRecord:
    """One trial run as the report needs it."""

    run_id: str
    trial_id: str
    status: Optional[str]
    params: dict[str, str]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    family_name: Optional[str] = None  # the lic_search.family_name tag (readable; absent on older runs)
    family: Optional[str] = None  # the lic_search.family tag (a ladder's fine-tunes: their start point's family)
    variant: Optional[str] = None  # the lic_search.variant tag: its variant label in a labelled space
    ladder: Optional[str] = None  # the lic_search.ladder tag: start / fine_tune in a ladder search
    lof: dict[str, float] = field(default_factory=dict)  # lof/<setting>/* metrics of `eval --search` (LOF sweep)
    per_image: Optional[PerImage] = None  # its last evaluation, image by image (None: recorded before they were kept)

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
                          rd_loss_history=list(self.histories.get(M.EVAL_RD_LOSS, [])), family=self.family,
                          variant=self.variant)


@dataclass
class SearchRecord:
    experiment: str
    tracking_uri: str
    parent_run_id: Optional[str]
    trials: list[TrialRecord]
    stratify_by: tuple[str, ...] = DEFAULT_STRATIFY_BY
    selection: str = ""  # which search was read (SearchSelection.describe)
    baseline: Optional[str] = None  # search.baseline's label, recorded on the parent run
    variants: tuple[str, ...] = ()  # the space's variant labels in file order (the table's order)


def _history(client, run_id: str, metric: str) -> list[tuple[int, float]]:
    by_step: dict[int, float] = {}
    for entry in sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp)):
        by_step[int(entry.step)] = float(entry.value)  # a re-logged step keeps its latest value
    return sorted(by_step.items())


def load_search(experiment: str, tracking_uri: Optional[str] = None, selection=None,
                progress: Any = None) -> SearchRecord:
    """Read the trial runs (params, stepped eval metrics) of one search (default: the latest of that name);
    ``progress`` (a ``search.monitor.meter.Meter``) counts the runs read."""

    selection = selection or select_search(experiment, tracking_uri)
    uri = selection.tracking_uri
    runs = trial_runs(experiment, selection=selection)
    if not runs:
        raise LicSearchError(f"MLflow experiment {experiment!r} at {uri} has no trial runs "
                             f"(runs tagged {T.TAG_ROLE}={T.ROLE_TRIAL}) in the selected search; has it started?")
    client = tracking.client_for(uri)
    trials = []
    if progress is not None:
        progress.start(len(runs))
    for run in runs:
        tags = run.data.tags
        trials.append(TrialRecord(
            run_id=run.info.run_id,
            trial_id=tags.get(T.TAG_TRIAL_ID) or run.info.run_name or run.info.run_id,
            status=tags.get(T.TAG_STATUS),
            params=dict(run.data.params),
            family_name=tags.get(T.TAG_FAMILY_NAME) or None, family=tags.get(T.TAG_FAMILY) or None,
            variant=tags.get(T.TAG_VARIANT) or None, ladder=tags.get(T.TAG_LADDER) or None,
            histories={m: _history(client, run.info.run_id, m) for m in HISTORY_METRICS + SCHEDULE_METRICS},
            lof={k: v for k, v in run.data.metrics.items() if k.startswith(T.METRIC_LOF_PREFIX)},
            per_image=per_image_table(client, run.info.run_id),
        ))
        if progress is not None:
            progress.update()
    trials.sort(key=lambda t: t.trial_id)
    return SearchRecord(experiment, uri, selection.parent_run_id, trials, selection.stratify_by,
                        selection.describe(), selection.baseline, selection.variants)


# ------------------------------------------------------------------------------------ computing
@dataclass
class Report:
    folder: Path
    markdown: Path
    files: list[Path]
    data: dict[str, Any]
    attached_to: Optional[str] = None
    pending: int = 0  # tracking records (the report's attachment among them) not in MLflow yet


@dataclass
class ReportContent:
    """Everything a report says, computed once: JSON-ready rows plus the objects the plots draw."""

    search: SearchRecord
    references: list[RDCurve]  # BD-rate reference curves: the baseline family's first when there is one, then
    # the published anchors (VTM, --anchor files)
    method: str
    include_stopped: bool
    metric: str
    mode: str
    generated: str
    ordered: list[Family]  # families: the space's variant order (baseline first), else best BD-rate first
    labels: dict[str, str]  # family key -> its variant label, else F1, F2, ...
    varying: list[str]  # params that tell the families apart (AuxT has its own column)
    with_ms_ssim: bool
    curves: dict[str, RDCurve]  # label -> the family's curve as saved in curves/<label>.json
    used: int  # trials the families and speed use
    counts: dict[str, int]  # trials per status
    families: list[dict] = field(default_factory=list)
    auxt_pairs: list[dict] = field(default_factory=list)
    speed: list[dict] = field(default_factory=list)
    best: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    schedules: list[dict] = field(default_factory=list)  # per trial with a train/lr history: lr (and crop) vs step
    lof: list[dict] = field(default_factory=list)  # per LOF setting: gain over lof0 and encode-time ratio
    baseline_family: Optional[str] = None  # label of the family every BD-rate is first measured against
    intervals: Optional[dict] = None  # BDIntervals.to_dict() of the variants against the baseline family
    bootstrap: Bootstrap = field(default_factory=Bootstrap)  # how every interval of the report is computed
    baseline_how: str = ""  # how it was chosen (search.baseline, the AuxT-off family) or why there is none

    @property
    def reference_names(self) -> list[str]:
        return [r.name for r in self.references]

    @property
    def stratify_by(self) -> tuple[str, ...]:
        return self.search.stratify_by

    @property
    def selection(self) -> str:
        return self.search.selection

    def data(self) -> dict[str, Any]:
        """report.json (without the plot list, which rendering adds)."""
        search = self.search
        return {"experiment": search.experiment, "tracking_uri": search.tracking_uri,
                "parent_run_id": search.parent_run_id, "generated": self.generated, "method": self.method,
                "stratify_by": list(self.stratify_by), "metric": self.metric, "mode": self.mode,
                "references": self.reference_names, "baseline_family": self.baseline_family,
                "baseline_how": self.baseline_how,
                "intervals": self.intervals, "bootstrap": self.bootstrap.to_dict(),
                "bootstrap_text": self.bootstrap.describe(),
                "best_per_rate_point": self.best, "families": self.families,
                "auxt_pairs": self.auxt_pairs, "speed": self.speed, "trials": self.trials,
                "schedules": self.schedules, "latent_overfitting": self.lof}


def _family_statuses(include_stopped: bool) -> set[Optional[str]]:
    statuses: set[Optional[str]] = {T.STATUS_COMPLETED, None}
    if include_stopped:
        statuses.add(T.STATUS_STOPPED)
    return statuses


def _labelled_curve(family: Family, label: str) -> RDCurve:
    curve = family.curve(name=label)
    curve.source = label
    return curve


def _bd(curve: RDCurve, reference: RDCurve, metric: str, method: str) -> tuple[Optional[float], Optional[str]]:
    """BD-rate of ``curve`` against ``reference``, or None and the short reason it has none.

    Two families of the search are compared as they are (same rate estimate, same eval images);
    a published anchor only on its own images ("not comparable" otherwise). Both under the overlap rule.
    That family curves are training-time likelihood rates is said once, above the table."""
    try:
        other = other_images(curve, reference) if reference.rate != RATE_LIKELIHOOD else None
        if other:
            return None, other
        return bd_rate(curve, reference, metric, method, min_shorter_overlap=MIN_SHORTER_OVERLAP).bd_rate, None
    except CurveError as error:
        return None, short_reason(str(error), curve, reference)


def family_labels(families: Sequence[Family]) -> dict[str, str]:
    """Family key -> short label: its variant label (labelled spaces; ``#2`` added when two families share
    one, e.g. two seeds), else ``F1``, ``F2``... in order."""
    labels: dict[str, str] = {}
    for index, family in enumerate(families):
        label = family.variant or f"F{index + 1}"
        taken = sum(1 for other in labels.values() if other == label or other.startswith(label + " #"))
        labels[family.key] = label if not taken else f"{label} #{taken + 1}"
    return labels


def family_names(families: Sequence[Family], trials: Sequence[TrialRecord]) -> dict[str, str]:
    """Family key -> readable name (``auxt=haar · lr=2e-3``), so people read recipes, not hashes.

    The ``lic_search.family_name`` tag its trials carry when there is one; else (runs recorded
    before the tag) the name :func:`search.tracking.run_names.family_name` gives over ``trials``' varying keys."""
    by_id = {t.trial_id: t for t in trials}
    keys = run_names.column_keys(t.params for t in trials)
    names = {}
    for family in families:
        members = [by_id[p.trial_id] for p in family.trials if p.trial_id in by_id]
        tagged = next((t.family_name for t in members if t.family_name), None)
        params = members[0].params if members else family.params
        names[family.key] = tagged or run_names.family_name(params, keys) or family.key
    return names


def _family_row(entry: FamilyRank, label: str, curve: RDCurve, references: Sequence[RDCurve], with_ms_ssim: bool,
                differ: dict[str, str], method: str, name: str) -> dict:
    family = entry.family
    bd: dict[str, Optional[float]] = {}
    reasons: list[str] = []
    for reference in references:
        if family.is_curve(reference):
            continue  # never against itself: its cells read "baseline"
        bd[f"{reference.name} psnr"], reason = _bd(curve, reference, "psnr", method)
        reasons += [reason] if reason else []
        if with_ms_ssim and curve.ms_ssim is not None and reference is references[0] \
                and reference.ms_ssim is not None:
            bd[f"{reference.name} ms-ssim"], reason = _bd(curve, reference, "ms-ssim", method)
            reasons += [reason] if reason else []
    return {"label": label, "key": family.key, "name": name, "variant": family.variant,
            "is_baseline": entry.is_baseline,
            "auxt": family.auxt, "points": len(curve),
            "images": curve.image_set.describe() if curve.image_set else None,
            "lambdas": [l for l in family.lambdas if l is not None], "trials": [t.trial_id for t in family.trials],
            "params": differ, "bd_rate": bd, "rank": entry.rank,
            "curve": curve.to_dict()["results"] if len(curve) else None, "notes": list(dict.fromkeys(reasons))}


NO_BASELINE = "no baseline variant in the search: intervals are measured against it"


def interval_fields(stats: Optional[BDIntervals], label: str, missing: str = "no per-image results") -> dict[str, Any]:
    """A family row's uncertainty: the rate saving of the variant it was folded into (seeds folded), with its
    interval (lower/upper), letter group, the variants it cannot be told apart from, and its seed count."""
    interval = stats.intervals.get(label) if stats is not None else None
    note = missing if stats is None else stats.reasons.get(label)
    return {"variant_label": label, "interval": interval.to_dict() if interval else None,
            "group": stats.letters.get(label) if stats is not None else None,
            "tied_with": stats.tied_with(label) if interval is not None else [],
            "seeds": stats.seeds.get(label) if stats is not None else None, "interval_note": note}


def _pair_rows(with_auxt: Family, without: Family, labels: dict[str, str], method: str) -> tuple[dict, list[dict]]:
    speed: FamilySpeed = family_speed(with_auxt, without)
    names = {"auxt_family": labels[with_auxt.key], "no_auxt_family": labels[without.key]}
    curve_on, curve_off = _labelled_curve(with_auxt, labels[with_auxt.key]), _labelled_curve(without, labels[without.key])
    bd: dict[str, Optional[float]] = {}
    notes: list[str] = []
    for metric in ("psnr", "ms-ssim"):
        if metric == "ms-ssim" and (curve_on.ms_ssim is None or curve_off.ms_ssim is None):
            continue
        bd[metric], reason = _bd(curve_on, curve_off, metric, method)
        notes += [reason] if reason else []
    pair = {**names, "bd_rate": bd, "fraction": speed.fraction, "speedup": speed.speedup, "bound": speed.bound,
            "notes": list(dict.fromkeys(notes))}
    rows = [{**names, "lmbda": lmbda, "auxt_final_loss": r.test_final_loss, "no_auxt_final_loss": r.reference_final_loss,
             "auxt_iterations_to_no_auxt_final": r.test_reaches_reference_final, "no_auxt_iterations": r.reference_iterations,
             "no_auxt_iterations_to_auxt_final": r.reference_reaches_test_final, "fraction": r.fraction,
             "speedup": r.speedup, "bound": r.reached_at_first_eval} for lmbda, r in speed.per_lambda.items()]
    if speed.per_lambda:
        rows.append({**names, "lmbda": None, "fraction": speed.fraction, "speedup": speed.speedup,
                     "bound": speed.bound})
    return pair, rows


def best_per_rate_point(trials: Sequence[TrialRecord], stratify_by: Sequence[str], metric: str = M.EVAL_RD_LOSS,
                        mode: Optional[str] = None, family_of: Optional[dict[str, Optional[str]]] = None,
                        bootstrap: Bootstrap = Bootstrap()) -> list[dict]:
    """The best trial (final ``metric``) of every stratum, in the strata's natural order, with its lead over
    each runner-up (paired over images, :func:`search.analysis.intervals.leader_gaps`): ``tied_with`` lists
    those whose difference's interval contains 0, ``runner_up`` the closest."""
    mode = mode or default_mode(metric)
    ranked = rank_within_strata(trials, lambda t: stratum_of(typed_params(t.params), stratify_by),
                                lambda t: t.final(metric), mode)
    members: dict[str, list[TrialRecord]] = {}
    for trial, stratum, rank in ranked:
        if rank is not None:
            members.setdefault(repr(stratum), []).append(trial)
    # its variant label, else its family's readable name (what its trials share), else the family's F-label
    label_of = lambda t: t.variant or t.family_name or (family_of or {}).get(t.trial_id) or t.trial_id  # noqa: E731
    rows = []
    for t, stratum, rank in ranked:
        if rank != 1:
            continue
        others = [o for o in members[repr(stratum)][1:] if o.per_image is not None]
        gaps = (leader_gaps(Measured(t.trial_id, t.lmbda, t.per_image),
                            [Measured(o.trial_id, o.lmbda, o.per_image) for o in others], metric, mode, bootstrap)
                if t.per_image is not None else [])
        by_id = {o.trial_id: o for o in others}
        gap_rows = [{**g.to_dict(), "label": label_of(by_id[g.trial_id])} for g in gaps]
        rows.append({"stratum": stratum, "trial_id": t.trial_id, "run_id": t.run_id, "label": label_of(t),
                     "family": (family_of or {}).get(t.trial_id), "auxt": t.auxt, "status": t.status,
                     "value": finite(t.final(metric)), "bpp": t.final(M.EVAL_BPP), "psnr": t.final(M.EVAL_PSNR),
                     "of": len(members[repr(stratum)]), "runner_up": gap_rows[0] if gap_rows else None,
                     "tied_with": [g for g in gap_rows if g["tied"]], "images": len(t.per_image.names)
                     if t.per_image is not None else None})
    return rows


def compute_report(search: SearchRecord, anchors: Sequence[RDCurve] = (), include_stopped: bool = False,
                   method: str = "pchip", metric: str = M.EVAL_RD_LOSS, mode: Optional[str] = None) -> ReportContent:
    """Every number of the report: families and BD-rates, AuxT pairs and speed, best per rate point, trials.

    ``anchors``: the published reference curves (default: VTM on Kodak), after the baseline family's."""
    references = list(anchors) or [load_curve(shipped_anchor())]
    statuses = _family_statuses(include_stopped)
    used = [t for t in search.trials if t.status in statuses]
    families = group_families(t.point() for t in used)
    baseline, baseline_how = baseline_family(families, search.baseline)
    if baseline is not None:  # Figure 8: rate savings against the search's own baseline first, VTM second
        references = [_labelled_curve(baseline, "baseline")] + references
    ranking = rank_families(families, references[0], "psnr", method)
    order = {label: i for i, label in enumerate(search.variants)}
    if order:  # the space's order (the paper's table), the baseline first
        ranking.sort(key=lambda e: (not e.is_baseline, order.get(e.family.variant or "", len(order))))
    ordered = [entry.family for entry in ranking]
    labels = family_labels(ordered)
    if baseline is not None:
        references[0].name = references[0].source = labels[baseline.key]
    differ = distinguishing_params(ordered)
    names = family_names(ordered, used)
    counts: dict[str, int] = {}
    for trial in search.trials:
        counts[trial.status or "unknown"] = counts.get(trial.status or "unknown", 0) + 1
    content = ReportContent(
        search=search, references=references, method=method, include_stopped=include_stopped, metric=metric,
        mode=mode or default_mode(metric),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        ordered=ordered, labels=labels,
        varying=sorted({k for params in differ.values() for k in params} - {AUXT_ENABLED_KEY}),
        with_ms_ssim=any(f.curve().ms_ssim is not None for f in ordered), curves={}, used=len(used), counts=counts,
        baseline_family=labels[baseline.key] if baseline is not None else None, baseline_how=baseline_how)
    stats, folded = (family_intervals(ordered, baseline, labels, {t.trial_id: t.per_image for t in used},
                                      "psnr", method, content.bootstrap) if baseline is not None else (None, {}))
    content.intervals = stats.to_dict() if stats is not None else None
    bunched = family_warnings(ordered, labels, {t.trial_id: t.ladder for t in used})
    for entry in ranking:
        label = labels[entry.family.key]
        curve = _labelled_curve(entry.family, label)
        if len(curve):
            content.curves[label] = entry.family.curve(name=f"{search.experiment} {label}")
        content.families.append(_family_row(entry, label, curve, references, content.with_ms_ssim,
                                            differ[entry.family.key], method, names[entry.family.key])
                                | interval_fields(stats, folded.get(entry.family.key, label),
                                                  NO_BASELINE if baseline is None else "no per-image results"))
        content.families[-1]["bunched"] = bunched.get(entry.family.key)
    for with_auxt, without in auxt_pairs(ordered):
        pair, rows = _pair_rows(with_auxt, without, labels, method)
        content.auxt_pairs.append(pair)
        content.speed += rows
    recipe_of = {t.trial_id: labels.get(t.family or family_key(t.params)) for t in search.trials}  # its family
    family_of = {t.trial_id: recipe_of[t.trial_id] for t in used}  # the family it counts in
    content.best = best_per_rate_point(search.trials, search.stratify_by, metric, content.mode, family_of,
                                       content.bootstrap)
    content.trials = [{"trial_id": t.trial_id, "run_id": t.run_id, "family": family_of.get(t.trial_id),
                       "recipe": recipe_of[t.trial_id], "variant": t.variant,
                       "auxt": t.auxt, "lmbda": t.lmbda, "status": t.status, "iterations": t.iterations,
                       "init": run_names.init_source(t.params.get(run_names.INIT_FROM_KEY)),
                       "stratum": stratum_of(typed_params(t.params), search.stratify_by),
                       "final": {m: t.final(m) for m in HISTORY_METRICS if t.final(m) is not None}}
                      for t in search.trials]
    content.schedules = [{"trial_id": t.trial_id, "family": recipe_of[t.trial_id], "lmbda": t.lmbda,
                          "auxt": t.auxt, "status": t.status, "lr": t.histories[M.TRAIN_LR],
                          "crop_size": t.histories.get(M.TRAIN_CROP_SIZE) or []}
                         for t in search.trials if t.histories.get(M.TRAIN_LR)]

    content.lof = lof_summary([t.lof for t in search.trials if t.lof], method)
    return content


def build_report(search: SearchRecord, out: Path, anchors: Sequence[RDCurve] = (), include_stopped: bool = False,
                 method: str = "pchip") -> Report:
    """Compute the report and write report.md, its PNG plots, report.json and the family curves into ``out``."""
    content = compute_report(search, anchors, include_stopped=include_stopped, method=method)
    markdown, files, data = render_report(content, Path(out))
    return Report(Path(out), markdown, files, data)


def generate_report(experiment: str, tracking_uri: Optional[str] = None, out: Optional[Path] = None,
                    anchor_files: Sequence[Path] = (), include_stopped: bool = False, method: str = "pchip",
                    attach: bool = True, selection=None, progress: Any = None) -> Report:
    """Read one search from MLflow (``progress``: see :func:`load_search`), write the report folder and
    attach it to the search's parent run."""
    anchors = [load_curve(shipped_anchor())] + [load_curve(p) for p in anchor_files]
    search = load_search(experiment, tracking_uri, selection, progress)
    folder = Path(out) if out is not None else Path("reports") / _safe_name(experiment)
    report = build_report(search, folder, anchors, include_stopped=include_stopped, method=method)
    if attach and search.parent_run_id:
        report.attached_to, report.pending = _attach(search, folder)
    return report


def _attach(search: SearchRecord, folder: Path) -> tuple[Optional[str], int]:
    """The report folder onto the parent run: through the search's tracking journal when its experiment folder is
    here (an outage delays it to ``lic-search sync``); directly when the report is made on another machine."""
    client = tracking.client_for(search.tracking_uri)
    experiment_dir = client.get_run(search.parent_run_id).data.tags.get(T.TAG_SEARCH_DIR, "")
    store = ExperimentStore(experiment_dir) if experiment_dir else None
    if store is not None and store.exists(STATE_FILE):
        pending = tracking_session.record(store, SearchState.load(store), J.ARTIFACTS, None,
                                          folder=str(folder.resolve()), artifact_path=ARTIFACT_PATH)
        return (None, pending) if pending else (search.parent_run_id, 0)
    try:
        client.log_artifacts(search.parent_run_id, str(folder), artifact_path=ARTIFACT_PATH)
    except Exception as error:  # noqa: BLE001 - MLflow's and the network's: the files are written, say why not attached
        raise TrackingError(f"report written to {folder} but not attached to parent run "
                            f"{search.parent_run_id}: {error.__class__.__name__}: {error}") from None
    return search.parent_run_id, 0


def rank_experiment_families(experiment: str, tracking_uri: Optional[str] = None,
                             anchor_file: Optional[Path] = None, metric: str = "psnr", method: str = "pchip",
                             include_stopped: bool = False, selection=None) -> list[dict[str, Any]]:
    """Rate families of one search ranked by BD-rate (for ``lic-search best --by family``).

    Against the published ``anchor_file``, else the search's own baseline family (``search.baseline``, or its
    one AuxT-off family), else VTM on Kodak. One JSON-ready row per family: the baseline first (``is_baseline``,
    no rank), then best first; families without a BD-rate (fewer than 4 points, too little overlap with the
    reference, named in ``reference``) come last with ``rank`` and ``bd_rate`` None and a ``reason``.
    ``family`` is the family's id (the ``lic_search.family`` hash), ``family_name`` its readable name.
    """
    search = load_search(experiment, tracking_uri, selection)
    statuses = _family_statuses(include_stopped)
    used = [t for t in search.trials if t.status in statuses]
    run_of = {t.trial_id: t.run_id for t in used}
    families = group_families(t.point() for t in used)
    baseline, _ = baseline_family(families, search.baseline) if anchor_file is None else (None, "")
    labels = family_labels(families)
    if baseline is not None:  # the search's own baseline variant, as Figure 8 measures rate savings
        reference = _labelled_curve(baseline, labels[baseline.key])
    else:
        reference = load_curve(anchor_file if anchor_file is not None else shipped_anchor())
    ranking = rank_families(families, reference, metric, method, labels=labels)
    bootstrap = Bootstrap()
    stats, folded = (family_intervals(families, baseline, labels, {t.trial_id: t.per_image for t in used}, metric,
                                      method, bootstrap) if baseline is not None else (None, {}))
    differ = distinguishing_params([entry.family for entry in ranking])
    names = family_names([entry.family for entry in ranking], used)
    bunched = family_warnings(families, labels, {t.trial_id: t.ladder for t in used})
    return [{"rank": entry.rank, "family": entry.family.key, "family_name": names[entry.family.key],
             "label": labels[entry.family.key], "bootstrap": bootstrap.to_dict(), "bunched": bunched.get(entry.family.key),
             "resolution": stats.resolution if stats is not None else None,
             "resolution_text": stats.resolution_sentence() if stats is not None else None,
             **interval_fields(stats, folded.get(entry.family.key, labels[entry.family.key]),
                               NO_BASELINE if baseline is None else "no per-image results"),
             "variant": entry.family.variant, "is_baseline": entry.is_baseline, "auxt": entry.family.auxt,
             "bd_rate": entry.bd_rate, "reference": reference.name, "metric": metric, "method": method,
             "reason": entry.reason, "points": len(entry.family.curve()),
             "lambdas": [l for l in entry.family.lambdas if l is not None],
             "trials": [t.trial_id for t in entry.family.trials],
             "run_ids": [run_of[t.trial_id] for t in entry.family.trials], "params": differ[entry.family.key]}
            for entry in ranking]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "search"


__all__ = ["TrialRecord", "SearchRecord", "Report", "ReportContent", "load_search", "compute_report",
           "build_report", "generate_report", "rank_experiment_families", "best_per_rate_point", "family_names",
           "interval_fields",
           "REPORT_FILE", "DATA_FILE", "ARTIFACT_PATH"]
