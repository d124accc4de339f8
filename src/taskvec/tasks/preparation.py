"""Per-tokenizer preparation, as in the reference code: which prompt variant a task uses and which pairs
it keeps.

- word tasks (translation, linguistic, custom): a leading space before BOTH input and answer
  (``example: want-> wanting``) when at least 70% as many pairs keep a one-token answer as without the
  space (``example:want->wanting``); the pairs with a one-token answer in the chosen variant are kept.
- prefix-scored tasks (knowledge): every pair, no added space; the first generated token is scored by
  prefix (:func:`taskvec.tasks.scoring.prefix_match`), so multi-token answers stay.
- algorithmic tasks: no added space; pairs with a one-token answer (all of the built-in ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from taskvec.models.loading import LoadedModel
from taskvec.models.tokens import answer_token_counts
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.protocol import ALL_PAIRS_RULE, PLAIN_RULE, WORD_RULE, PromptProtocol

logger = logging.getLogger(__name__)

#: The reference keeps the leading-space variant when it keeps at least this share of the pairs the
#: variant without spaces keeps.
SPACE_SURVIVAL_THRESHOLD = 0.7
WORD_CATEGORIES = ("translation", "linguistic", "custom")


@dataclass(frozen=True)
class PreparedTask:
    """A task's kept pairs and the template they were checked with."""

    task: Task
    template: PromptTemplate
    pairs: tuple[Pair, ...]
    answer_tokens: tuple[int, ...] = ()  # tokens of each kept pair's answer after its query prompt

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def n_usable(self) -> int:
        return len(self.pairs)

    @property
    def single_token_answers(self) -> bool:
        """Whether every kept answer is one token (False for prefix-scored tasks, which keep every pair)."""
        return prompt_rule(self.task) != ALL_PAIRS_RULE


def prompt_rule(task: Task) -> str:
    """How ``task`` is prepared: ALL_PAIRS_RULE (prefix scoring), WORD_RULE or PLAIN_RULE (algorithmic)."""
    if task.scoring == "prefix":
        return ALL_PAIRS_RULE
    return WORD_RULE if task.category in WORD_CATEGORIES else PLAIN_RULE


def _kept(counts: list[int], multi_token: bool) -> list[int]:
    return [i for i, c in enumerate(counts) if (c >= 1 if multi_token else c == 1)]


def prepare_task(
    lm: LoadedModel,
    task: Task,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    *,
    keep_multi_token: bool = False,
    prompt: PromptProtocol | None = None,
) -> PreparedTask:
    """The task's template variant and kept pairs under the reference's rules (module docstring).

    ``keep_multi_token=True`` (for multi-token decoding; not the paper's protocol) picks the variant the
    same way but keeps every pair whose answer tokenizes cleanly after the query, of any length.
    ``prompt``: choices beyond the paper's (:class:`taskvec.tasks.protocol.PromptProtocol`): a fixed template
    used as it is for every task, and every pair kept and scored on its first token by prefix."""
    prompt = prompt or PromptProtocol()
    if prompt.pairs == "all" and task.scoring != "prefix":
        task = replace(task, scoring="prefix")
    rule = prompt_rule(task)
    pairs = [(p.input, p.output) for p in task.pairs]
    if prompt.fixed_template is not None:
        fixed = prompt.fixed_template
        counts = answer_token_counts(lm, pairs, fixed)
        keep = _kept(counts, rule == ALL_PAIRS_RULE or keep_multi_token)
        kept = tuple(task.pairs[i] for i in keep)
        logger.info("task %s: %s template, %s rule, %d of %d pairs kept", task.name, prompt.template, rule,
                    len(kept), len(task.pairs))  # fmt: skip
        return PreparedTask(task=task, template=fixed, pairs=kept, answer_tokens=tuple(counts[i] for i in keep))
    plain = template.with_prefixes("", "")
    plain_counts = answer_token_counts(lm, pairs, plain)
    chosen, counts = plain, plain_counts
    if rule == WORD_RULE:
        spaced = template.with_prefixes(" ", " ")
        spaced_counts = answer_token_counts(lm, pairs, spaced)
        n_spaced, n_plain = spaced_counts.count(1), plain_counts.count(1)
        if n_spaced >= SPACE_SURVIVAL_THRESHOLD * n_plain:
            chosen, counts = spaced, spaced_counts
    if rule == ALL_PAIRS_RULE and not keep_multi_token:
        keep = list(range(len(task.pairs)))
    else:
        keep = _kept(counts, keep_multi_token)
    kept = tuple(task.pairs[i] for i in keep)
    logger.info("task %s: %s rule, %d of %d pairs kept (input prefix %r, answer prefix %r)", task.name, rule,
                len(kept), len(task.pairs), chosen.input_prefix, chosen.answer_prefix)  # fmt: skip
    return PreparedTask(task=task, template=chosen, pairs=kept, answer_tokens=tuple(counts[i] for i in keep))
