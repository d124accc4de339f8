"""The protocol choices that change what a run measures, recorded in every run's configuration.

A run directory records this (``run-config.json``), so a directory written under another protocol is
never resumed under this one (``experiments.outdir.check_run_config`` refuses the mismatch).
docs/protocol.md explains each choice against the reference code's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from taskvec.errors import TaskvecError
from taskvec.models.adapter import FALLBACK_PREFIX
from taskvec.models.loading import LoadedModel
from taskvec.prompts import DEFAULT_TEMPLATE, FV_TEMPLATE, PromptTemplate

#: Bumped whenever a choice below changes the prompts, the pairs kept or the scoring.
PROTOCOL_VERSION = 2

#: How each kind of task is prepared (see :func:`taskvec.tasks.preparation.prompt_rule`).
WORD_RULE = "word"  # translation, linguistic, custom: space before input and answer when >= 70% as many stay
PLAIN_RULE = "plain"  # algorithmic: no added spaces, one-token answers
ALL_PAIRS_RULE = "all_pairs"  # prefix scoring (knowledge): every pair, no added spaces


#: The prompt formats a run can use: the paper's (prepared per task, below) and the function-vector code's.
TEMPLATES = {"paper": DEFAULT_TEMPLATE, "fv": FV_TEMPLATE}
PAIRS = ("protocol", "all")  # the pairs each task's rule keeps, or every pair (first token scored by prefix)
BOSLESS_PREFIXES = {"newline": FALLBACK_PREFIX, "none": ""}


@dataclass(frozen=True)
class PromptProtocol:
    """Choices of prompt and pairs beyond the paper's (the defaults), e.g. to match the function-vector code:
    ``template="fv"`` (``Q: x\nA: y`` blocks separated by a blank line, a space before every input and answer),
    ``pairs="all"`` (every pair whose answer tokenizes after its query, scored on the first token by prefix),
    ``bosless_prefix="none"`` (nothing put before prompts when the tokenizer adds no BOS token)."""

    template: str = "paper"
    pairs: str = "protocol"
    bosless_prefix: str = "newline"

    def __post_init__(self) -> None:
        for name, value, allowed in (("template", self.template, TEMPLATES), ("pairs", self.pairs, PAIRS),
                                     ("bosless prefix", self.bosless_prefix, BOSLESS_PREFIXES)):  # fmt: skip
            if value not in allowed:
                raise TaskvecError(f"{name} {value!r}; expected one of {', '.join(allowed)}")

    @classmethod
    def from_record(cls, record: dict) -> PromptProtocol:
        """The choices a :func:`protocol_record` holds (an older record: the defaults)."""
        prefix = record.get("bosless_prefix", FALLBACK_PREFIX)
        bosless = next((k for k, v in BOSLESS_PREFIXES.items() if v == prefix), "newline")
        return cls(record.get("template", "paper"), record.get("pairs", "protocol"), bosless)

    @property
    def fixed_template(self) -> PromptTemplate | None:
        """The template every task uses as it is (None: each task's rule chooses its variant of the paper's)."""
        return None if self.template == "paper" else TEMPLATES[self.template]

    def applied(self, lm: LoadedModel) -> LoadedModel:
        """``lm`` with this protocol's text before BOS-less prompts (a new handle; the model is shared)."""
        if self.bosless_prefix == "newline" or not lm.adapter.prefix_ids:
            return lm
        return replace(lm, adapter=replace(lm.adapter, prefix_ids=[]))


def protocol_record(prompt: PromptProtocol | None = None) -> dict:
    """The protocol as JSON-ready data, with ``prompt``'s choices (keys beyond the paper's only when they
    differ from it, so that earlier runs' records stay equal)."""
    prompt = prompt or PromptProtocol()
    record = {
        "version": PROTOCOL_VERSION,
        "word_tasks": "leading space on input and answer when >= 70% as many one-token answers as without",
        "knowledge_tasks": "all pairs, no added space, first token scored by prefix in either direction",
        "algorithmic_tasks": "no added spaces",
        "bosless_prefix": BOSLESS_PREFIXES[prompt.bosless_prefix],
        "dummy_queries": "apart from the demonstrations and the query",
        "sampling": "one generator per task seeded from (seed, task name)",
    }
    if prompt.template != "paper":
        record["template"] = prompt.template
    if prompt.pairs != "protocol":
        record["pairs"] = prompt.pairs
    return record
