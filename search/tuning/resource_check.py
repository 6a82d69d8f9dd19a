"""Fail fast when no node of the Ray cluster can ever run one trial.

Ray queues a trial whose resources no node has and waits forever (the autoscaler prints a
message every minute). Before ``Tuner.fit`` the driver compares what one trial asks for
(``resources.cpus_per_trial``, ``resources.gpus_per_trial``) with every live node's total
resources, for the local instance and for a cluster joined with ``--address`` alike.
Clusters that add nodes on demand (an autoscaler with node types larger than any node up
now) are not foreseen: the check looks at the nodes that exist.

A data-parallel trial (``resources.workers_per_trial`` > 1) reserves a sliver for its
coordinator and one bundle per worker (its share of the trial's totals), which Ray places on
any nodes: the check asks that every worker's bundle fit some node and that the nodes hold N of
them together. :func:`concurrent_trials` says how many such trials the cluster runs at once
(the Tuner's ``max_concurrent_trials``: Tune itself only sees the coordinators).
"""

from __future__ import annotations

from typing import Any, Optional

from search.errors import LicSearchError, SpaceError

# Ray resource name -> (space key, unit in messages)
_KEYS = {"CPU": ("resources.cpus_per_trial", "CPU"), "GPU": ("resources.gpus_per_trial", "GPU")}


def trial_needs(resources: Any) -> dict[str, float]:
    """What one trial reserves, in Ray's resource names (zero amounts left out)."""
    needs = {"CPU": float(resources.cpus_per_trial), "GPU": float(resources.gpus_per_trial)}
    return {name: amount for name, amount in needs.items() if amount > 0}


def _show(amount: float) -> str:
    return f"{amount:g}"


def _plural(amount: float, unit: str) -> str:
    return f"{_show(amount)} {unit}{'' if amount == 1 else 's'}"


def _describe(node: dict[str, float]) -> str:
    return " + ".join(_plural(node.get(name, 0.0), unit) for name, (_, unit) in _KEYS.items())


def _fail(file: Optional[str], key: str, message: str) -> LicSearchError:
    return SpaceError(file, key, message) if file else LicSearchError(f"{key}: {message}")


def check_trial_fits(needs: dict[str, float], nodes: list[dict], file: Optional[str] = None) -> None:
    """Raise naming the key when no live node has ``needs`` in total (``nodes`` as ``ray.nodes()``)."""
    totals = _live(nodes)
    for name, amount in needs.items():
        key, unit = _KEYS.get(name, (f"resources.{name}", name))
        largest = max(node.get(name, 0.0) for node in totals)
        if largest <= 0:
            raise _fail(file, key, f"{_show(amount)}, but no node of this cluster has a {unit} "
                        f"({len(totals)} node(s): {'; '.join(_describe(n) for n in totals)})")
        if amount > largest:
            raise _fail(file, key, f"{_show(amount)}, but the largest node of this cluster has "
                        f"{_plural(largest, unit)}")
    if not any(all(node.get(name, 0.0) >= amount for name, amount in needs.items()) for node in totals):
        asked = " and ".join(f"{_KEYS[name][0].split('.')[1]} {_show(a)}" for name, a in needs.items())
        raise _fail(file, "resources", f"{asked} fit together on no single node of this cluster "
                    f"(nodes: {'; '.join(_describe(n) for n in totals)})")


def _live(nodes: list[dict]) -> list[dict[str, float]]:
    totals = [dict(node.get("Resources", {})) for node in nodes if node.get("Alive", True)]
    if not totals:
        raise LicSearchError("the Ray cluster has no live node")
    return totals


def _bundles_on(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node holds."""
    return int(min(node.get(name, 0.0) / amount + 1e-9 for name, amount in bundle.items() if amount > 0))


def worker_slots(bundle: dict[str, float], nodes: list[dict]) -> int:
    """Worker bundles the live nodes hold together (``nodes`` as ``ray.nodes()``)."""
    return sum(_bundles_on(node, bundle) for node in _live(nodes))


def check_workers_fit(workers: int, bundle: dict[str, float], nodes: list[dict], file: Optional[str] = None) -> None:
    """Raise naming the key when the cluster cannot place one data-parallel trial's ``workers`` bundles."""
    slots = worker_slots(bundle, nodes)
    if slots < workers:
        totals = _live(nodes)
        raise _fail(file, "resources.workers_per_trial", f"{workers} workers of {_describe(bundle)} each, but this "
                    f"cluster holds {slots} such worker(s) in all (nodes: {'; '.join(_describe(n) for n in totals)})")


def concurrent_trials(workers: int, bundle: dict[str, float], nodes: list[dict]) -> int:
    """How many data-parallel trials of ``workers`` bundles run at once on these nodes (at least 1)."""
    return max(1, worker_slots(bundle, nodes) // workers)


def check_cluster(resources: Any, file: Optional[str] = None) -> None:
    """:func:`check_trial_fits` (or, data-parallel, :func:`check_workers_fit`) against the connected cluster."""
    import ray

    if resources.workers_per_trial > 1:
        from search.tuning.worker_groups import worker_group

        group = worker_group(resources)
        check_workers_fit(group.workers, group.worker_resources(), ray.nodes(), file)
        return
    check_trial_fits(trial_needs(resources), ray.nodes(), file)
