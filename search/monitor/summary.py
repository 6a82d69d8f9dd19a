"""The search's answer so far: the best trial of each rate point, as the console, ``status``,
the end-of-search summary and the MLflow parent run all show it.

Works on plain ``(trial id, config, latest metrics)`` entries, so it serves Ray's live trials,
a finished ResultGrid and the ``result.json`` files of an experiment folder alike. Rate
points are the search's ``stratify_by`` strata (:mod:`search.space.strata`): R-D losses at
different λ are not comparable.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from search.bootstrap import Bootstrap, Measured, interval_text, leader_gaps
from search.space.sections import DEFAULT_STRATIFY_BY, default_mode
from search.space.strata import finite, pareto_within_strata, rank_within_strata, stratum_label, stratum_of
from search.tracking import names as T
from search.space.variants import Variants
from search.tracking import run_names
from trainables import metrics as M
from trainables.metrics import PerImage

SHOWN_METRICS = (M.EVAL_RD_LOSS, M.EVAL_BPP, M.EVAL_PSNR)


@dataclass(frozen=True)
class Entry:
    """One trial as the summary needs it."""

    trial_id: str
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    per_image: Optional[PerImage] = None  # its scored evaluation, image by image (ties need it)


@dataclass
class Best:
    """The best trial of one rate point."""

    stratum: dict[str, Any]
    trial_id: str
    name: str  # the trial's distinguishing params (its MLflow run name)
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    varying: dict[str, str] = field(default_factory=dict)  # full dotted key -> shown value
    # The closest runner-up's difference (search.bootstrap.Gap.to_dict() with its "name"), and those of the
    # runners-up the images cannot tell from this trial (tied: the difference's interval contains 0)
    runner_up: Optional[dict[str, Any]] = None
    tied_with: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return stratum_label(self.stratum)


@dataclass(frozen=True)
class Ranking:
    """How a search ranks trials: its metric, mode and rate-point keys (from its ``search`` section)."""

    metric: str = M.EVAL_RD_LOSS
    mode: str = "min"
    stratify_by: tuple[str, ...] = DEFAULT_STRATIFY_BY
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of a multi-objective search; () otherwise

    @classmethod
    def of(cls, search: Optional[Mapping[str, Any]]) -> "Ranking":
        search = search or {}
        metric = search.get("metric") or M.EVAL_RD_LOSS
        keys = search.get("stratify_by")
        names = search.get("objectives") or []
        modes = search.get("modes") or [default_mode(name) for name in names]
        return cls(metric, search.get("mode") or default_mode(metric),
                   tuple(DEFAULT_STRATIFY_BY if keys is None else keys), tuple(zip(names, modes)))

    def describe_objectives(self) -> str:
        """``eval/rd_loss min, eval/decode_steps min``."""
        return ", ".join(f"{name} {mode}" for name, mode in self.objectives)


def best_per_rate_point(entries: Iterable[Entry], ranking: Ranking = Ranking(),
                        keys: Optional[Sequence[str]] = None, variants: Variants = Variants()) -> list[Best]:
    """The rank-1 trial of every rate point that has a finite score, in natural rate-point order.

    ``keys`` are the distinguishing keys (default: those varying across ``entries``); ``variants``
    names the trials of a labelled space."""
    entries = [e for e in entries if e.config and e.metrics]
    keys = list(keys) if keys is not None else run_names.column_keys((e.config for e in entries), variants)
    ranked = rank_within_strata(entries, lambda e: stratum_of(e.config, ranking.stratify_by),
                                lambda e: e.metrics.get(ranking.metric), ranking.mode)
    members: dict[str, list[Entry]] = {}
    for e, stratum, rank in ranked:
        if rank is not None:
            members.setdefault(repr(stratum), []).append(e)
    best = []
    for e, stratum, rank in ranked:
        if rank == 1:
            best.append(_shown(e, stratum, keys, variants, [ranking.metric]))
            _compare(best[-1], e, members[repr(stratum)][1:], ranking, keys, variants)
    return best


def _compare(best: Best, leader: Entry, others: Sequence[Entry], ranking: Ranking, keys: Sequence[str],
             variants: Variants) -> None:
    """The leader's difference to each runner-up, paired over images (:func:`search.bootstrap.leader_gaps`)."""
    if leader.per_image is None:
        return
    scored = {e.trial_id: e for e in others if e.per_image is not None}
    gaps = leader_gaps(Measured(leader.trial_id, None, leader.per_image),
                       [Measured(e.trial_id, None, e.per_image) for e in scored.values()], ranking.metric,
                       ranking.mode)
    rows = [{**g.to_dict(), "name": run_names.trial_name(scored[g.trial_id].config, keys,
                                                          variants.label_of(scored[g.trial_id].config))}
            for g in gaps]
    best.runner_up = rows[0] if rows else None
    best.tied_with = [row for row in rows if row["tied"]]


def comparison(b: Best) -> str:
    """``; tied with no WLS (trial 3f0a1_00001): +0.3 % [-0.2, +0.9]`` or ``; leads ... by +2.1 % [+1.0, +3.2]``."""
    if b.tied_with:
        return "; tied with " + ", ".join(f"{g['name']} (trial {g['trial_id']}): {interval_text(g['relative'])}"
                                          for g in b.tied_with)
    if b.runner_up:
        g = b.runner_up
        return f"; leads {g['name']} (trial {g['trial_id']}) by {interval_text(g['relative'])}"
    return ""


def _shown(e: Entry, stratum: dict[str, Any], keys: Sequence[str], variants: Variants, scores: Sequence[str]) -> Best:
    """A trial as the summary shows it: its name, its ``scores`` and the shown metrics, its distinguishing values."""
    label = variants.label_of(e.config)
    return Best(stratum, e.trial_id, run_names.trial_name(e.config, keys, label),
                {m: finite(e.metrics.get(m)) for m in dict.fromkeys((*scores, *SHOWN_METRICS, M.ITERATIONS))},
                run_names.described(e.config, keys, label))


@dataclass
class Front:
    """The Pareto front of one rate point of a multi-objective search: its trials, best first objective first."""

    stratum: dict[str, Any]
    trials: list[Best]

    @property
    def label(self) -> str:
        return stratum_label(self.stratum)


def pareto_fronts(entries: Iterable[Entry], ranking: Ranking, keys: Optional[Sequence[str]] = None,
                  variants: Variants = Variants()) -> list[Front]:
    """Every rate point's Pareto front over ``ranking.objectives`` (trials no other trial of the rate point
    beats on every objective), in natural rate-point order."""
    entries = [e for e in entries if e.config and e.metrics]
    keys = list(keys) if keys is not None else run_names.column_keys((e.config for e in entries), variants)
    names = [name for name, _ in ranking.objectives]
    fronted = pareto_within_strata(entries, lambda e: stratum_of(e.config, ranking.stratify_by),
                                   lambda e: [e.metrics.get(name) for name in names],
                                   [mode for _, mode in ranking.objectives])
    fronts: dict[str, Front] = {}
    for e, stratum, front in fronted:
        if front != 1:
            continue
        fronts.setdefault(stratum_label(stratum), Front(stratum, [])).trials.append(
            _shown(e, stratum, keys, variants, names))
    return list(fronts.values())


def front_lines(fronts: Sequence[Front], ranking: Ranking) -> list[str]:
    """Per rate point, its front: ``front at λ=0.013, distortion=mse: 2 trials`` then one indented line per
    trial with its objective values (``eval/rd_loss 0.81, eval/decode_steps 4 — steps=4 · lr=1e-4``)."""
    out = []
    for front in fronts:
        out.append(f"front at {front.label}: {len(front.trials)} trial{'s' if len(front.trials) != 1 else ''}")
        for b in front.trials:
            values = ", ".join(f"{name} {_num(b.metrics.get(name))}" for name, _ in ranking.objectives)
            out.append(f"  {values} — {b.name} (trial {b.trial_id})")
    return out


def _num(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def lines(best: Sequence[Best], ranking: Ranking = Ranking()) -> list[str]:
    """One line per rate point: ``best at λ=0.013, distortion=mse: eval/rd_loss = 0.8123 at 600 iterations,
    bpp 0.61, PSNR 27.3 dB — λ=0.013 · auxt=haar · lr=2.2e-3 (trial 3f0a1_00002)``."""
    out = []
    for b in best:
        m = b.metrics
        score = m.get(ranking.metric)
        iterations = m.get(M.ITERATIONS)
        others = ", ".join(f"{short} {_num(m.get(key))}{unit}" for key, short, unit in
                           ((M.EVAL_RD_LOSS, "rd_loss", ""), (M.EVAL_BPP, "bpp", ""), (M.EVAL_PSNR, "PSNR", " dB"))
                           if key != ranking.metric)
        out.append(f"best at {b.label}: {ranking.metric} = {'-' if score is None else f'{score:.4f}'} at "
                   f"{'-' if iterations is None else int(iterations)} iterations, {others} — {b.name} "
                   f"(trial {b.trial_id}){comparison(b)}")
    if any(b.runner_up for b in best):
        out.append(f"(runner-up differences in % of the best's {ranking.metric}, paired over the eval images; "
                   f"{Bootstrap().describe()})")
    return out


def markdown(best: Sequence[Best], ranking: Ranking = Ranking(), fronts: Sequence[Front] = ()) -> str:
    """The per-rate-point table the parent run carries as an artifact (a multi-objective search: its Pareto
    fronts first, then the best trial by ``ranking.metric``)."""
    within = ", ".join(ranking.stratify_by)
    text = ""
    if fronts:
        text = _table(f"Pareto front per rate point over {ranking.describe_objectives()} within {within}",
                      [b for front in fronts for b in front.trials], [name for name, _ in ranking.objectives]) + "\n"
    text += _table(f"Best trial per rate point, by {ranking.metric} ({ranking.mode}) within {within}", best,
                   [ranking.metric])
    if any(b.runner_up for b in best):
        text += (f"\nRunner-up: its difference in % of the best's {ranking.metric}, paired over the eval images; "
                 f"tied: the interval contains 0, the images cannot tell them apart. {Bootstrap().describe()}.\n")
    return text


def _table(title: str, best: Sequence[Best], scores: Sequence[str]) -> str:
    keys = list(dict.fromkeys(k for b in best for k in b.varying))
    metrics = list(dict.fromkeys((*scores, *SHOWN_METRICS, M.ITERATIONS)))
    compared = any(b.runner_up for b in best)
    header = ["rate point", "trial", *metrics, *(["runner-up [95 %]", "tied with"] if compared else []),
              *(run_names.label(k, keys) for k in keys)]
    rows = [[b.label, b.trial_id, *(_num(b.metrics.get(m), 6) for m in metrics),
             *([_runner_up(b), ", ".join(f"{g['name']} ({g['trial_id']})" for g in b.tied_with) or "-"]
               if compared else []),
             *(b.varying.get(k, "-") for k in keys)] for b in best]
    text = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(text + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _runner_up(b: Best) -> str:
    g = b.runner_up
    return "-" if g is None else f"{g['name']} ({g['trial_id']}): {interval_text(g['relative'])}"


def _key(label: str) -> str:
    """A rate-point label as an MLflow key component (letters, digits, ``_-. /:`` only)."""
    return re.sub(r"[^\w.\- ]", "_", label.replace(", ", " ")).strip() or "all"


def parent_summary(best: Sequence[Best], ranking: Ranking = Ranking(), parent_run_id: str = "",
                   fronts: Sequence[Front] = ()) -> dict[str, Any]:
    """The search's summary for its MLflow parent run, JSON-ready (a tracking journal record ships it,
    so an outage delays it instead of losing it): a table artifact (``text`` at ``artifact``), per rate
    point a tag (``lic_search.best.λ_0.013`` = name, trial, score) and metrics
    (``best/λ_0.013/eval/rd_loss``, ``[key, value, timestamp_ms, step]``) the run list can sort on, and
    the experiment's description (``note``, naming ``parent_run_id``)."""
    tags: dict[str, str] = {}
    metrics: list[list] = []
    now = int(time.time() * 1000)
    for b in best:
        key = _key(b.label)
        score = b.metrics.get(ranking.metric)
        tags[T.TAG_BEST_PREFIX + key] = (f"{b.name} (trial {b.trial_id}, {ranking.metric} {_num(score, 6)})"
                                         + comparison(b))[:5000]
        metrics += [[f"{T.METRIC_BEST_PREFIX}{key}/{m}", float(v), now, 0] for m, v in b.metrics.items()
                    if v is not None]
        if b.runner_up:  # the lead over the closest runner-up, in % of the best's score, with its interval
            relative = b.runner_up["relative"]
            metrics += [[f"{T.METRIC_BEST_PREFIX}{key}/runner_up_gap_pct{suffix}", float(relative[part]), now, 0]
                        for suffix, part in (("", "estimate"), ("_lower", "lower"), ("_upper", "upper"))]
            metrics.append([f"{T.METRIC_BEST_PREFIX}{key}/tied", float(len(b.tied_with)), now, 0])
    return {"text": markdown(best, ranking, fronts), "artifact": T.ARTIFACT_BEST_TABLE, "tags": tags,
            "metrics": metrics, "note": experiment_note(best, ranking, parent_run_id, fronts)}


def experiment_note(best: Sequence[Best], ranking: Ranking, parent_run_id: str, fronts: Sequence[Front] = ()) -> str:
    """The experiment's description in the MLflow UI (shown above the run list, Markdown): the latest
    search's winners and where its trials are laid out by rate point (the saved view of
    :mod:`search.tracking.view`, in the UI's "Views" menu)."""
    return (f"**Latest search** (parent run `{parent_run_id}`)\n\n{markdown(best, ranking, fronts)}\n"
            f"Trial runs are named by what tells them apart (λ, AuxT, then every key that varies). "
            f"Rank only within a rate point ({', '.join(ranking.stratify_by)}): the view \"lic-search <name>: "
            f"trials by rate point\" (Views menu; `lic-search ui <name>` prints its link) groups the trials by "
            f"the tag `{T.TAG_RATE_POINT}` and sorts them by `{ranking.metric}`; or `lic-search best <name>`.\n")


__all__ = ["Entry", "Best", "Ranking", "Front", "best_per_rate_point", "comparison",
           "pareto_fronts", "lines", "front_lines",
           "markdown", "parent_summary", "experiment_note"]
