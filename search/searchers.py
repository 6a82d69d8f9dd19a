"""Search algorithms (grid/random, Optuna) built from a space's ``search`` section."""

from __future__ import annotations

from search.space import SearchSpec


def build_search_algorithm(spec: SearchSpec):
    search = spec.file.search
    if search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        algorithm = OptunaSearch(metric=search.metric, mode=search.mode, seed=search.seed)
        return ConcurrencyLimiter(algorithm, max_concurrent=search.max_concurrent) if search.max_concurrent else algorithm
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=search.max_concurrent or 0, random_state=search.seed)
