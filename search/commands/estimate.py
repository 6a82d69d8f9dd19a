"""`lic-search estimate SPACE.yaml`: time a few real steps, print what the whole search will cost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from search.commands._shared import add_quiet_option
from search.errors import LicSearchError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="predict a search's device-hours and wall time from a few timed training steps",
        description="Time a few real training steps (the training engine, on this machine's GPU if it has one, "
                    "else its CPU) of each distinct model/batch/crop/precision configuration in the space, and "
                    "print the device-hours of the whole search (a data.crop_schedule's stages timed each at their "
                    "own crop and batch size, weighted by their length; each evaluation on the space's eval set at "
                    "its eval_every with its checkpoint, and each trial's start-up, measured too): as a grid (every "
                    "trial its full budget) and "
                    "under its ASHA schedule (from the rungs), and the wall time on --gpus GPUs.",
    )
    parser.add_argument("space", type=Path, help="search-space YAML file (see spaces/)")
    parser.add_argument("--steps", type=int, default=30,
                        help="timed training steps per configuration, over all rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps first; also the length of each timed interval (default 10)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="time the configurations in this many rounds, every other one in reverse order, the "
                             "--steps split between them, and average: a machine whose speed drifts during the "
                             "estimate weighs every configuration alike (default 2)")
    parser.add_argument("--gpus", type=int, default=1,
                        help="GPUs the search will have, for the wall time (default 1); trials per GPU come "
                             "from resources.gpus_per_trial")
    parser.add_argument("--data", type=Path, default=None,
                        help="time on this image folder instead of the space's data (the step time depends on "
                             "crop and batch size, not on the images), e.g. samples/kodak-crops/train")
    parser.add_argument("--launch", type=float, default=None, metavar="S",
                        help="seconds a search spends around its trials (imports, Ray's start and shutdown, the MLflow "
                             "parent run, the summary), added to the wall time (default: measured by running a "
                             "one-iteration search in this process through the code `run` uses, on a local Ray "
                             "instance)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to time the steps (default: a GPU if present, else the CPU)")
    add_quiet_option(parser)
    parser.set_defaults(func=_estimate)


def _hours(value: float) -> str:
    if value >= 10:
        return f"{value:,.0f} h"
    if value >= 1:
        return f"{value:.1f} h"
    return f"{value:.3g} h ({value * 60:.3g} min)"


def _stage_share(trial, step) -> float:
    """The fraction of ``trial``'s budget spent at ``step`` (its crop_schedule stages that use it)."""
    phases = trial.phases()
    ends = [s.at for s in phases[1:]] + [1.0]
    return sum(end - s.at for s, end in zip(phases, ends) if s.step == step)


def _print_ladder(ladder, seconds, scratch, file, gpus: int, unit: str) -> None:
    """The ladder's cost (start points, then fine-tunes, each phase at its own concurrency) beside the from-scratch grid."""
    from search.analysis.estimate import estimate

    starts, tuned = ladder
    resources = file.resources
    phases = [estimate(trials, seconds, file.scheduler, gpus=gpus, gpus_per_trial=resources.gpus_per_trial,
                       max_concurrent=file.search.max_concurrent) for trials in (starts, tuned) if trials]
    iterations = sum(p.grid_iterations for p in phases)
    hours = sum(p.grid_hours for p in phases)
    wall = sum(p.grid_wall_hours for p in phases)
    fine = phases[1].grid_iterations if len(phases) > 1 else 0
    print(f"\nladder ({len(starts)} start point(s) from scratch, then {len(tuned)} rate point(s) fine-tuned from "
          f"them; every start point finishing its budget): {phases[0].grid_iterations:,} + {fine:,} = "
          f"{iterations:,} iterations, "
          f"{_hours(hours).replace(' h', ' ' + unit, 1)}, wall {_hours(wall)}")
    print(f"from scratch (the same {len(starts) + len(tuned)} trials, no ladder): {scratch.grid_iterations:,} "
          f"iterations, {_hours(scratch.grid_hours).replace(' h', ' ' + unit, 1)}, wall "
          f"{_hours(scratch.grid_wall_hours)}; the ladder is {iterations / max(scratch.grid_iterations, 1):.0%} of it")
    if file.scheduler.type == "asha":
        print("  under ASHA only the start points that finish their budget are fine-tuned: the ladder costs at most this")
    if file.ladder.settle is not None:
        print(f"  fine-tunes priced at their cap (ladder.fine_tune schedule.iterations): the settle rule "
              f"(ladder.settle: {file.ladder.settle.tolerance:g}% over {file.ladder.settle.evaluations} evaluations) "
              "ends each one when its rate has settled, so they cost at most this, at least "
              f"{file.ladder.settle.evaluations} evaluations each")


def _run_probe(space: Path, storage_path: Path, tracking_uri: str) -> None:
    """The launch probe's search, run as ``lic-search run`` runs one."""
    from search.tuning.tuner import run_search

    run_search(space, storage_path, tracking_uri=tracking_uri)


def _estimate(args) -> int:
    from search.analysis.estimate import estimate, plan_ladder, plan_trials
    from search.analysis.step_timing import device_label, launch_seconds, step_cost, timed_run, timing_order
    from search.monitor import meter as meters
    from search.monitor.meter import Meter
    from search.space import load_space
    from trainables.device import resolve_device
    from trainables.training.trainable import apply_resource_limits

    meters.configure(args.quiet)
    if min(args.steps, args.warmup, args.gpus, args.rounds) < 1:
        raise LicSearchError(f"--steps, --warmup, --gpus and --rounds must be at least 1, got {args.steps}, "
                             f"{args.warmup}, {args.gpus}, {args.rounds}")
    if args.data is not None and not args.data.is_dir():
        raise LicSearchError(f"--data: {args.data} is not a folder of images")
    spec = load_space(args.space, check_data=args.data is None)
    file = spec.file
    resources = file.resources
    device = resolve_device(args.device)
    apply_resource_limits({"CPU": resources.cpus_per_trial, "GPU": resources.gpus_per_trial})
    trials = plan_trials(spec, seed=file.search.seed)
    kind = "GPU" if device.type == "cuda" else "CPU"
    print(f"space: {spec.path} ({file.name}): {len(trials)} trials, scheduler {file.scheduler.type}")
    print(f"timed on: {device_label(device)}" + ("" if kind == "GPU" else
          "  -- no GPU used: these are CPU timings, CPU-hours, not GPU-hours"))
    ladder = plan_ladder(spec) if file.ladder is not None else ([], [])
    seconds = {}
    first = {}
    for trial in [*trials, *ladder[0], *ladder[1]]:  # every stage of a data.crop_schedule is its own step config
        for stage in trial.phases():
            first.setdefault(stage.step, stage.config)
    order = timing_order(sorted(first), args.rounds)
    per_round = -(-args.steps // args.rounds)  # ceil: every round times at least one step
    rounds: dict = {step: [] for step in first}  # s/iteration of each round
    with Meter("estimate: timing step configurations", "timing", len(order)) as meter:
        for k, (index, step) in enumerate(order, 1):
            meter.on(f"{k}/{len(order)}: {step.label()}"
                     + (f" (round {index + 1}/{args.rounds})" if args.rounds > 1 else ""))
            if index == 0:  # evaluation and start-up once; the steps every round
                seconds[step] = step_cost(first[step], steps=per_round, warmup=args.warmup, data=args.data,
                                          device=device)
                rounds[step].append(seconds[step].iteration)
            else:
                rounds[step].append(timed_run(first[step], steps=per_round, warmup=args.warmup, data=args.data,
                                              device=device).seconds_per_iteration)
            meter.update()
            if len(rounds[step]) < args.rounds:
                continue
            seconds[step] = replace(seconds[step], iteration=sum(rounds[step]) / len(rounds[step]))
            count = sum(1 for t in trials if any(s.step == step for s in t.phases()))
            staged = [t for t in trials if len(t.phases()) > 1 and any(s.step == step for s in t.phases())]
            share = ""
            if staged:
                fractions = sorted({_stage_share(t, step) for t in staged})
                share = ", crop_schedule stage: " + "/".join(f"{f:.0%}" for f in fractions) + " of the budget"
            cost = seconds[step]
            spread = ""
            if len(rounds[step]) > 1:
                spread = f" (rounds {'/'.join(f'{r:.3g}' for r in rounds[step])})"
            with meter.paused():
                print(f"  {step.label()}: {cost.iteration:.4g} s/iteration{spread}, {cost.evaluation:.3g} s/evaluation "
                      f"with its checkpoint, {cost.startup:.3g} s start-up ({count} trial(s){share})", flush=True)
    if args.launch is None:
        with Meter("estimate: timing a one-trial search's launch and end", "search", 1) as meter:
            worker, around = launch_seconds(_run_probe)
            meter.update()
        print(f"  search launch and end: {around:.3g} s around the trials (a one-iteration search run here through "
              f"`run`'s code: Ray's start and shutdown, the MLflow parent run, the summary), {worker:.3g} s "
              "for a fresh worker to import the trainable (once per concurrent slot, in its first trial's time)",
              flush=True)
    else:
        worker, around = 0.0, args.launch
        print(f"  search launch and end (--launch): {around:.3g} s", flush=True)
    workers = resources.workers_per_trial
    if workers > 1:
        # One process timed the global batch; N data-parallel workers are assumed to divide it evenly
        # (bench/ddp_overhead.py measures the DDP wrapper's own cost on one worker).
        seconds = {step: replace(cost, iteration=cost.iteration / workers) for step, cost in seconds.items()}
        print(f"  at {workers} workers per trial: the times above / {workers}, assumed linear (not measured: "
              "the data-parallel speed-up itself is not timed here)")
    result = estimate(trials, seconds, file.scheduler, gpus=args.gpus, gpus_per_trial=resources.gpus_per_trial,
                      max_concurrent=file.search.max_concurrent, launch=around + worker, worker_start=worker)
    unit = f"{kind}-hours"
    print(f"\ngrid (every trial its full budget): {result.grid_iterations:,} iterations, "
          f"{_hours(result.grid_hours).replace(' h', ' ' + unit, 1)}")
    if result.asha_hours is not None:
        print(f"ASHA (grace_period {file.scheduler.grace_period}, reduction_factor {file.scheduler.reduction_factor:g}; "
              f"per stratum ceil(n/{file.scheduler.reduction_factor:g}) pass each rung, the costliest kept): "
              f"{result.asha_iterations:,} iterations, {_hours(result.asha_hours).replace(' h', ' ' + unit, 1)}")
        for rung in result.rungs:
            print(f"  rung {rung.milestone:g}: {rung.reach} trial(s) reach it, {rung.passed} go on")
    else:
        print(f"ASHA: none (scheduler {file.scheduler.type}: every trial runs its full budget, as the grid)")
    if resources.gpus_per_trial > 0:
        where = (f"{args.gpus} GPU(s), gpus_per_trial {resources.gpus_per_trial:g}: {result.concurrent} trial(s) "
                 "at once")
    else:
        where = (f"CPU trials (gpus_per_trial 0; --gpus ignored): {result.concurrent} at once"
                 + (" (search.max_concurrent)" if file.search.max_concurrent else ""))
    wall = f"wall time on {where}: grid {_hours(result.grid_wall_hours)}"
    if result.asha_wall_hours is not None:
        wall += f", ASHA {_hours(result.asha_wall_hours)}"
    print(wall)
    if file.ladder is not None:
        _print_ladder(ladder, seconds, result, file, args.gpus, unit)
    if 0 < resources.gpus_per_trial < 1:
        print("note: trials sharing a GPU are assumed to split it (no speed-up from packing); "
              "bench/gpu_acceptance.py measures the real packing gain")
    return 0
