"""Drawing (demonstrations, query, dummy queries) sets reproducibly."""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskvec.errors import TaskDataError
from taskvec.tasks.definitions import Pair


@dataclass(frozen=True)
class EvalSet:
    demonstrations: tuple[Pair, ...]
    query: Pair
    dummies: tuple[str, ...]  # inputs for theta extraction, apart from the demonstrations and the query

    @property
    def demo_tuples(self) -> list[tuple[str, str]]:
        return [(p.input, p.output) for p in self.demonstrations]


def minimum_pairs(shots: int, n_dummy: int) -> int:
    """Pairs needed to build one set: the demonstrations, the query and the dummy queries, all distinct."""
    return shots + 1 + n_dummy


def query_stream(pairs: tuple[Pair, ...], count: int, rng: random.Random) -> list[Pair]:
    """``count`` queries: a shuffled pass over all pairs, reshuffled when it runs out."""
    out: list[Pair] = []
    while len(out) < count:
        batch = list(pairs)
        rng.shuffle(batch)
        out.extend(batch[: count - len(out)])
    return out


def build_sets(
    pairs: tuple[Pair, ...], queries: list[Pair], shots: int, n_dummy: int, rng: random.Random
) -> list[EvalSet]:
    sets = []
    for query in queries:
        others = [p for p in pairs if p.input != query.input]
        chosen = rng.sample(others, shots + n_dummy)
        sets.append(EvalSet(tuple(chosen[:shots]), query, tuple(p.input for p in chosen[shots:])))
    return sets


def draw_splits(
    pairs: tuple[Pair, ...], shots: int, n_dev: int, n_test: int, n_baseline: int, n_dummy: int, rng: random.Random
) -> tuple[list[EvalSet], list[EvalSet], list[Pair]]:
    """Dev sets, test sets and baseline queries. Dev and test queries are distinct when the pool allows."""
    if len(pairs) < minimum_pairs(shots, n_dummy):
        raise TaskDataError(
            f"{len(pairs)} usable pairs cannot fill one set of {shots} demonstrations, a query and {n_dummy} "
            f"dummy queries (needs {minimum_pairs(shots, n_dummy)})"
        )
    queries = query_stream(pairs, n_dev + n_test, rng)
    dev = build_sets(pairs, queries[:n_dev], shots, n_dummy, rng)
    test = build_sets(pairs, queries[n_dev:], shots, n_dummy, rng)
    baseline = query_stream(pairs, n_baseline, rng)
    return dev, test, baseline
