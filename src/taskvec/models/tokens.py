"""How a model's tokenizer splits answers: the count behind the one-token rule of the paper's protocol."""

from __future__ import annotations

from collections.abc import Sequence

from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate


def answer_token_counts(lm: LoadedModel, pairs: Sequence[tuple[str, str]], template: PromptTemplate) -> list[int]:
    """How many tokens each answer adds after its query prompt (1 means a single-token answer)."""
    tok = lm.tokenizer
    queries = [template.query_prompt(x) for x, _ in pairs]
    full = [template.demonstration(x, y) for x, y in pairs]
    q_ids = tok(queries, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    return [len(f) - len(q) if f[: len(q)] == q else -1 for q, f in zip(q_ids, f_ids)]
