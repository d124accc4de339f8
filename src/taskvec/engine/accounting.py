"""Counting the work of forward passes: tokens, block-tokens and unembedded rows, per named stage.

The engine reports what it computes through :func:`record`; nothing is counted unless a caller opened
an :func:`accounting` context (the benchmark and ``taskvec run`` do). Counts are exact and independent
of machine load, so they say where time should go; the wall time per stage says where it went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field


@dataclass
class StageWork:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): less sensitive to other processes
    forwards: int = 0
    tokens: int = 0  # real (non-padding) tokens run through at least one block
    padded_tokens: int = 0  # batch rows x new columns, padding included
    block_tokens: int = 0  # sum over forwards of real tokens x blocks run (the blocks' matmul work)
    logit_rows: int = 0  # rows multiplied by the full unembedding

    def add(self, other: StageWork) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Accounting:
    stages: dict[str, StageWork] = field(default_factory=dict)
    current: str = "other"

    def work(self, name: str | None = None) -> StageWork:
        return self.stages.setdefault(name or self.current, StageWork())

    def total(self) -> StageWork:
        total = StageWork()
        for work in self.stages.values():
            total.add(work)
        return total

    def to_dict(self) -> dict:
        return {name: asdict(work) for name, work in self.stages.items()}


_ACTIVE: ContextVar[Accounting | None] = ContextVar("taskvec_accounting", default=None)


@contextmanager
def accounting(into: Accounting | None = None) -> Iterator[Accounting]:
    """Count the engine's work inside the block (nested contexts count into the innermost)."""
    acc = into if into is not None else Accounting()
    token = _ACTIVE.set(acc)
    try:
        yield acc
    finally:
        _ACTIVE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Attribute the work and wall time inside the block to stage ``name`` (no-op when not counting)."""
    acc = _ACTIVE.get()
    if acc is None:
        yield
        return
    previous, acc.current = acc.current, name
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        work = acc.work(name)
        work.seconds += time.perf_counter() - started
        work.cpu_seconds += time.process_time() - cpu_started
        acc.current = previous


def record(*, tokens: int, padded_tokens: int, blocks: int, logit_rows: int = 0) -> None:
    """Report one forward pass: ``tokens`` real tokens through ``blocks`` decoder blocks."""
    acc = _ACTIVE.get()
    if acc is None:
        return
    work = acc.work()
    work.forwards += 1
    work.tokens += tokens
    work.padded_tokens += padded_tokens
    work.block_tokens += tokens * blocks
    work.logit_rows += logit_rows
