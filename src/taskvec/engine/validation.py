"""Checks on user-given demonstrations and queries, with errors that name the bad value."""

from __future__ import annotations

from collections.abc import Sequence

from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.models.tokens import answer_token_counts
from taskvec.prompts import PromptTemplate


def check_demonstrations(
    lm: LoadedModel, demonstrations: Sequence[tuple[str, str]], template: PromptTemplate, single_token: bool = True
) -> list[tuple[str, str]]:
    pairs = [tuple(d) for d in demonstrations]
    if not pairs:
        raise TaskvecError("no demonstrations given: a task vector needs at least one (input, output) pair")
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, str) for v in pair):
            raise TaskvecError(f"demonstration {pair!r} is not an (input, output) pair of strings")
    if not single_token:
        return pairs  # type: ignore[return-value]
    for (x, y), count in zip(pairs, answer_token_counts(lm, pairs, template)):
        if count != 1:
            raise TaskvecError(
                f"demonstration answer {template.answer_prefix + y!r} (for input {x!r}) is not one token for this "
                f"tokenizer ({'it changes the query tokens' if count < 0 else f'{count} tokens'}); "
                "task vectors predict one token: choose single-token answers"
            )
    return pairs  # type: ignore[return-value]


def check_strings(values: Sequence[str], what: str = "prompts") -> list[str]:
    """A non-empty list of strings, or a clear error."""
    if isinstance(values, str):
        raise TaskvecError(f"{what} must be a list of strings, got the single string {values!r}")
    values = list(values)
    if not values:
        raise TaskvecError(f"no {what} given: expected at least one string")
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise TaskvecError(f"{what} must be strings, got {bad[0]!r}")
    return values


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries a task vector is applied to: a non-empty list of non-blank strings (the task's inputs)."""
    queries = check_strings(queries, "queries")
    blank = [q for q in queries if not q.strip()]
    if blank:
        raise TaskvecError(f"query {blank[0]!r} is empty; expected the input of the task, e.g. 'France'")
    return queries
