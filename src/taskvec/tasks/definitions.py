"""What a task is: named input/output pairs with a category and a scoring rule."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("algorithmic", "translation", "linguistic", "knowledge")
SCORINGS = ("exact", "prefix", "alternatives")


@dataclass(frozen=True)
class Pair:
    input: str
    output: str
    alternatives: tuple[str, ...] = ()

    @property
    def accepted(self) -> tuple[str, ...]:
        return (self.output, *self.alternatives)


@dataclass(frozen=True)
class Task:
    name: str
    category: str
    description: str
    scoring: str
    pairs: tuple[Pair, ...]
    provenance: str = ""
    source: str = "builtin"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def inputs(self) -> list[str]:
        return [p.input for p in self.pairs]
