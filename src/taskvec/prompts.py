"""The paper's prompt format: ``example:{x}->{y}`` lines joined by newlines, ending in the query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from taskvec.errors import TaskvecError


@dataclass(frozen=True)
class PromptTemplate:
    """How demonstrations and queries are written.

    ``query`` must contain ``{input}``, where the input goes after ``input_prefix``; a demonstration is
    the query followed by ``answer_prefix`` and the answer. The reference code's leading-space variant of
    word tasks puts a space before both, ``example: want-> wanting`` (see :data:`SPACED_TEMPLATE`).
    """

    query: str = "example:{input}->"
    separator: str = "\n"
    answer_prefix: str = ""
    input_prefix: str = ""

    def __post_init__(self) -> None:
        if "{input}" not in self.query:
            raise TaskvecError(f"prompt template query {self.query!r} must contain '{{input}}'")

    def with_answer_prefix(self, answer_prefix: str) -> PromptTemplate:
        return replace(self, answer_prefix=answer_prefix)

    def with_prefixes(self, input_prefix: str, answer_prefix: str) -> PromptTemplate:
        """This template with ``input_prefix`` before every input and ``answer_prefix`` before every answer."""
        return replace(self, input_prefix=input_prefix, answer_prefix=answer_prefix)

    def query_prompt(self, x: str) -> str:
        return self.query.replace("{input}", self.input_prefix + x)

    def demonstration(self, x: str, y: str) -> str:
        return self.query_prompt(x) + self.answer_prefix + y

    def icl_prompt(self, demonstrations: Sequence[tuple[str, str]], x: str) -> str:
        parts = [self.demonstration(dx, dy) for dx, dy in demonstrations]
        parts.append(self.query_prompt(x))
        return self.separator.join(parts)

    def to_dict(self) -> dict[str, str]:
        d = {"query": self.query, "separator": self.separator, "answer_prefix": self.answer_prefix}
        if self.input_prefix:  # absent when empty: templates saved before input_prefix existed read the same
            d["input_prefix"] = self.input_prefix
        return d


DEFAULT_TEMPLATE = PromptTemplate()
#: The reference code's leading-space variant of word tasks: ``example: want-> wanting``.
SPACED_TEMPLATE = DEFAULT_TEMPLATE.with_prefixes(" ", " ")
#: The function-vector code's prompt (Todd et al. 2024, its default prefixes and separators with
#: ``prepend_space``): ``Q: {x}\nA: {y}`` blocks separated by a blank line, the query ending in ``A:``.
FV_TEMPLATE = PromptTemplate(query="Q:{input}\nA:", separator="\n\n", answer_prefix=" ", input_prefix=" ")
