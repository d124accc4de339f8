"""The paper's prompt format: ``example:{x}->{y}`` lines joined by newlines, ending in the query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from taskvec.errors import TaskvecError


@dataclass(frozen=True)
class PromptTemplate:
    """How demonstrations and queries are written.

    ``query`` must contain ``{input}``; a demonstration is the query followed by ``answer_prefix``
    and the answer. ``answer_prefix=" "`` is the paper's leading-space variant (``example:go-> going``).
    """

    query: str = "example:{input}->"
    separator: str = "\n"
    answer_prefix: str = ""

    def __post_init__(self) -> None:
        if "{input}" not in self.query:
            raise TaskvecError(f"prompt template query {self.query!r} must contain '{{input}}'")

    def with_answer_prefix(self, answer_prefix: str) -> PromptTemplate:
        return PromptTemplate(query=self.query, separator=self.separator, answer_prefix=answer_prefix)

    def query_prompt(self, x: str) -> str:
        return self.query.replace("{input}", x)

    def demonstration(self, x: str, y: str) -> str:
        return self.query_prompt(x) + self.answer_prefix + y

    def icl_prompt(self, demonstrations: Sequence[tuple[str, str]], x: str) -> str:
        parts = [self.demonstration(dx, dy) for dx, dy in demonstrations]
        parts.append(self.query_prompt(x))
        return self.separator.join(parts)

    def to_dict(self) -> dict[str, str]:
        return {"query": self.query, "separator": self.separator, "answer_prefix": self.answer_prefix}


DEFAULT_TEMPLATE = PromptTemplate()
