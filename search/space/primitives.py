"""What each sampling primitive means, in one place: the values validation must see (its edges), a Ray Tune
search domain for the Tuner, and a plain draw for ``estimate``'s trial plan. The YAML spelling of a primitive
(``{loguniform: [1e-4, 1e-3]}``) is read by :func:`search.space.keypath.primitive`."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Kind:
    """One primitive kind; ``args`` is the YAML list (``grid``/``choice``: the values)."""

    edges: Callable[[list], list]  # every value of a grid/choice, the ends of a range
    domain: Callable[[list], Any]  # the Ray Tune domain (a grid's nested values are converted by the caller)
    draw: Callable[[list, random.Random], Any]  # one value, for plans that need a plausible draw, not Ray's


def _tune():
    from ray import (
        tune,  # Ray is imported when a Tuner is built, not when a space is validated
    )

    return tune


def _q_edges(args: list) -> list:
    low, high, q = args
    return [round(low / q) * q, round(high / q) * q]


def _q_draw(args: list, rng: random.Random) -> float:
    low, high, q = args
    return round(rng.uniform(low, high) / q) * q


KINDS: dict[str, Kind] = {
    "grid": Kind(list, lambda args: _tune().grid_search(list(args)), lambda args, rng: copy.deepcopy(rng.choice(args))),
    "choice": Kind(list, lambda args: _tune().choice(list(args)), lambda args, rng: copy.deepcopy(rng.choice(args))),
    "uniform": Kind(lambda args: [args[0], args[1]], lambda args: _tune().uniform(*args),
                    lambda args, rng: rng.uniform(args[0], args[1])),
    "loguniform": Kind(lambda args: [args[0], args[1]], lambda args: _tune().loguniform(*args),
                       lambda args, rng: math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))),
    "randint": Kind(lambda args: [args[0], args[1] - 1], lambda args: _tune().randint(*args),
                    lambda args, rng: rng.randrange(args[0], args[1])),
    "quniform": Kind(_q_edges, lambda args: _tune().quniform(*args), _q_draw),
}
