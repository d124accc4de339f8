"""Per-tokenizer preparation: the leading-space rule and single-token answer filtering."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from taskvec.models.loading import LoadedModel
from taskvec.models.tokens import answer_token_counts
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate
from taskvec.tasks.definitions import Pair, Task

logger = logging.getLogger(__name__)

#: The reference code keeps the leading-space variant when at least this share of pairs survives.
SPACE_SURVIVAL_THRESHOLD = 0.7


@dataclass(frozen=True)
class PreparedTask:
    """A task's pairs whose answer is one token for this model, and the template they were checked with."""

    task: Task
    template: PromptTemplate
    pairs: tuple[Pair, ...]
    answer_tokens: tuple[int, ...] = ()  # tokens of each pair's answer after its query prompt (1 by default)

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def n_usable(self) -> int:
        return len(self.pairs)


def _single_token_pairs(lm: LoadedModel, task: Task, template: PromptTemplate) -> tuple[Pair, ...]:
    counts = answer_token_counts(lm, [(p.input, p.output) for p in task.pairs], template)
    return tuple(p for p, c in zip(task.pairs, counts) if c == 1)


def prepare_task(
    lm: LoadedModel, task: Task, template: PromptTemplate = DEFAULT_TEMPLATE, *, keep_multi_token: bool = False
) -> PreparedTask:
    """Pick the answer prefix (a space after ``->`` when >= 70% of answers stay one token, else the
    variant keeping more pairs) and keep the pairs whose answer is one token.

    ``keep_multi_token=True`` (for multi-token decoding; not the paper's protocol) picks the prefix the
    same way but keeps every pair whose answer tokenizes cleanly after the query, of any length."""
    spaced = template.with_answer_prefix(" ")
    kept = _single_token_pairs(lm, task, spaced)
    if len(kept) >= SPACE_SURVIVAL_THRESHOLD * len(task.pairs):
        template = spaced
    else:  # below the threshold: the variant that keeps more pairs (the space one on ties)
        plain = template.with_answer_prefix("")
        kept_plain = _single_token_pairs(lm, task, plain)
        template, kept = (spaced, kept) if len(kept) >= len(kept_plain) else (plain, kept_plain)
    logger.info("task %s: %d of %d pairs have a one-token answer (answer prefix %r)",
                task.name, len(kept), len(task.pairs), template.answer_prefix)  # fmt: skip
    if keep_multi_token:
        counts = answer_token_counts(lm, [(p.input, p.output) for p in task.pairs], template)
        chosen = [(p, c) for p, c in zip(task.pairs, counts) if c >= 1]
        return PreparedTask(task, template, tuple(p for p, _ in chosen), tuple(c for _, c in chosen))
    return PreparedTask(task=task, template=template, pairs=kept, answer_tokens=(1,) * len(kept))
