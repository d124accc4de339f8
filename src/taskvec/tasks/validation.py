"""One rule for every task's pool of pairs against the protocol's sizes, built-in tasks and task files alike.

- fewer pairs than one set needs (the demonstrations, the query and the dummy queries, all distinct):
  refused, for all such tasks at once, before anything is computed;
- fewer pairs than the dev and test queries: a warning saying how often each pair is a query (dev and
  test queries then overlap).

It runs twice in ``taskvec run``: before the model loads, on each task's pairs (exact for prefix-scored
tasks, an upper bound for the others, whose one-token filtering needs the tokenizer), and after
preparation, on the pairs kept, before any task is computed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from taskvec.errors import TaskDataError
from taskvec.tasks.definitions import Task
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.sampling import minimum_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSizes:
    """The sizes of the protocol that a task's pool must serve."""

    shots: int
    n_dev: int
    n_test: int
    n_dummy: int

    @property
    def floor(self) -> int:
        return minimum_pairs(self.shots, self.n_dummy)

    @property
    def queries(self) -> int:
        return self.n_dev + self.n_test


@dataclass(frozen=True)
class Pool:
    """One task's pool: ``usable`` pairs of ``total``; ``final`` once the tokenizer has filtered it."""

    name: str
    usable: int
    total: int
    final: bool = True


def pool_error(pool: Pool, sizes: PoolSizes) -> str | None:
    if pool.usable >= sizes.floor:
        return None
    which = "usable pairs" if pool.final else "pairs"
    return (
        f"task {pool.name!r} has {pool.usable} {which} (of {pool.total}) but one set needs {sizes.floor}: "
        f"shots={sizes.shots} demonstrations, 1 query and n_dummy={sizes.n_dummy} dummy queries, all distinct"
    )


def pool_warning(pool: Pool, sizes: PoolSizes) -> str | None:
    if pool.usable >= sizes.queries or pool.usable < sizes.floor:
        return None
    return (
        f"task {pool.name}: {pool.usable} usable pairs (of {pool.total}) for {sizes.queries} dev+test queries "
        f"(n_dev={sizes.n_dev}, n_test={sizes.n_test}): each pair is the query of "
        f"{sizes.queries / pool.usable:.1f} sets on average and dev and test queries overlap"
    )


def check_pools(pools: Sequence[Pool], sizes: PoolSizes) -> None:
    """Refuse (one error naming every task too small) or warn (each task short of distinct queries);
    warnings only for final pools, so a run warns once per task."""
    errors = [e for e in (pool_error(p, sizes) for p in pools) if e]
    if errors:
        raise TaskDataError("; ".join(errors) + "; nothing was computed: drop these tasks or lower --shots/--n-dummy")
    for pool in pools:
        warning = pool_warning(pool, sizes) if pool.final else None
        if warning:
            logger.warning(warning)


def task_pools(tasks: Sequence[Task]) -> list[Pool]:
    """Pools before preparation (no tokenizer): each task's pairs, an upper bound for filtered tasks."""
    return [Pool(t.name, len(t.pairs), len(t.pairs), final=False) for t in tasks]


def prepared_pools(prepared: Sequence[PreparedTask]) -> list[Pool]:
    """Pools after preparation: the pairs each task keeps for this tokenizer."""
    return [Pool(p.name, p.n_usable, len(p.task.pairs)) for p in prepared]
