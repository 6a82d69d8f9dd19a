"""Fail fast when no node of the Ray cluster can ever run one trial.

Ray queues a trial whose resources no node has and waits forever (the autoscaler prints a
message every minute). Before ``Tuner.fit`` the driver compares what one trial asks for
(``resources.cpus_per_trial``, ``resources.gpus_per_trial``) with every live node's total
resources, for the local instance and for a cluster joined with ``--address`` alike.
Clusters that add nodes on demand (an autoscaler with node types larger than any node up
now) are not foreseen: the check looks at the nodes that exist.
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
    totals = [dict(node.get("Resources", {})) for node in nodes if node.get("Alive", True)]
    if not totals:
        raise LicSearchError("the Ray cluster has no live node")
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


def check_cluster(resources: Any, file: Optional[str] = None) -> None:
    """:func:`check_trial_fits` against the Ray cluster this process is connected to."""
    import ray

    check_trial_fits(trial_needs(resources), ray.nodes(), file)
