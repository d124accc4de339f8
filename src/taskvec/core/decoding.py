"""The one answer decoder: generated token ids -> the answer text the protocol scores.

A single predicted token (the paper's protocol) and a multi-token continuation are decoded the same way:
the tokenizer's text of the ids, cut at the first stop string (a newline by default), stripped. A stopping
EOS ends a generated answer and is dropped; a single predicted token is decoded as it is (``FIRST_TOKEN``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate


@dataclass(frozen=True)
class StopRule:
    """When a row stops: at the end-of-sequence token (``eos``), at any special token of the tokenizer
    (``special``: an answer never contains one; the token is dropped), and at the first generated token whose
    text contains one of ``stop_strings`` (default a newline: the paper's prompts put one demonstration per
    line). The answer is the decoded text before the first stop string; an EOS that stopped a row is dropped.
    ``StopRule(eos=False, special=False, stop_strings=())`` always decodes ``max_new_tokens`` tokens."""

    eos: bool = True
    stop_strings: tuple[str, ...] = ("\n",)
    special: bool = True
    max_tokens: int | None = None  # at most this many tokens per answer (None: ``max_new_tokens`` decides)

    def cut(self, text: str) -> str:
        for stop in self.stop_strings:
            if stop:
                text = text.split(stop)[0]
        return text

    @classmethod
    def from_template(cls, template: PromptTemplate) -> StopRule:
        """The demonstrations' own format: an answer ends where the prompt's separator (a newline) or the
        template's fixed text (``example:``, ``->``) would start the next demonstration or query."""
        before, _, after = template.query.partition("{input}")
        parts = [template.separator, before.strip(), after.strip()]
        return cls(stop_strings=tuple(dict.fromkeys(p for p in parts if p)))

    @classmethod
    def from_demonstrations(
        cls, template: PromptTemplate, answers: Sequence[str], token_counts: Sequence[int]
    ) -> StopRule:
        """:meth:`from_template`, plus what the demonstrated answers show: a punctuation mark that no
        demonstrated answer contains ends an answer (``Cape Town, South Africa`` stops at the comma when no
        demonstration has one), and an answer has at most one token more than the longest demonstrated one
        (``token_counts``: the demonstrated answers' lengths in tokens)."""
        base = cls.from_template(template)
        unseen = [mark for mark in ANSWER_MARKS if not any(mark in a for a in answers)]
        longest = max(token_counts) + 1 if token_counts else None
        return cls(stop_strings=(*base.stop_strings, *unseen), max_tokens=longest)


#: Punctuation that ends an answer when no demonstrated answer contains it (:meth:`StopRule.from_demonstrations`).
ANSWER_MARKS = (",", ";", " (", ".", ":", "!", "?")


#: Added tokens not marked special that are control markers all the same (``<start_of_image>`` in gemma-3's
#: GGUF tokenizer): ``<...>`` with an underscore or a bar inside, unlike HTML tags such as ``<table>``.
CONTROL_MARKER = re.compile(r"<[^<>\s]*[_|][^<>\s]*>")


def special_token_ids(lm: LoadedModel) -> frozenset[int]:
    """Every special token id of the model's tokenizer: named ones, added tokens marked special, and added
    control markers (:data:`CONTROL_MARKER`)."""
    return _special_ids(lm.tokenizer)


@functools.lru_cache(maxsize=16)
def _special_ids(tokenizer) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False) or CONTROL_MARKER.fullmatch(str(getattr(token, "content", token))):
            ids.add(int(token_id))
    return frozenset(ids)


DEFAULT_STOP = StopRule()
#: How one predicted token is decoded (the paper's cleaning): its text (an EOS or other special token
#: included), cut at a newline, stripped.
FIRST_TOKEN = StopRule(eos=False, special=False)


def decode_answer(lm: LoadedModel, ids: Sequence[int], stop: StopRule = DEFAULT_STOP) -> str:
    """The answer text of generated ids: the stopping EOS dropped (with ``stop.special``, everything from
    the first special token on), cut at the first stop string, stripped."""
    ids = [int(i) for i in ids]
    if stop.eos and ids and ids[-1] == lm.tokenizer.eos_token_id:
        ids = ids[:-1]
    if stop.special:
        special = special_token_ids(lm)
        ids = ids[: next((i for i, t in enumerate(ids) if t in special), len(ids))]
    text = lm.tokenizer.decode(ids, skip_special_tokens=False)
    return stop.cut(text).strip()


def decode_prediction(lm: LoadedModel, token_id: int) -> str:
    """The paper's cleaning of a predicted token: decode, cut at the first newline, strip."""
    return decode_answer(lm, [token_id], FIRST_TOKEN)


def decode_predictions(lm: LoadedModel, token_ids: torch.Tensor) -> list[str]:
    return [decode_prediction(lm, t) for t in token_ids.tolist()]
