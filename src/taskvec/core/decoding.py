"""The one answer decoder: generated token ids -> the answer text the protocol scores.

A single predicted token (the paper's protocol) and a multi-token continuation are decoded the same way:
the tokenizer's text of the ids, cut at the first stop string (a newline by default), stripped. A stopping
EOS ends a generated answer and is dropped; a single predicted token is decoded as it is (``FIRST_TOKEN``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.models.loading import LoadedModel


@dataclass(frozen=True)
class StopRule:
    """When a row stops: at the end-of-sequence token (``eos``) and at the first generated token whose text
    contains one of ``stop_strings`` (default a newline: the paper's prompts put one demonstration per
    line). The answer is the decoded text before the first stop string; an EOS that stopped a row is dropped.
    ``StopRule(eos=False, stop_strings=())`` always decodes ``max_new_tokens`` tokens."""

    eos: bool = True
    stop_strings: tuple[str, ...] = ("\n",)

    def cut(self, text: str) -> str:
        for stop in self.stop_strings:
            text = text.split(stop)[0]
        return text


DEFAULT_STOP = StopRule()
#: How one predicted token is decoded: its text (an EOS included), cut at a newline, stripped.
FIRST_TOKEN = StopRule(eos=False)


def decode_answer(lm: LoadedModel, ids: Sequence[int], stop: StopRule = DEFAULT_STOP) -> str:
    """The answer text of generated ids: the stopping EOS dropped, cut at the first stop string, stripped."""
    ids = [int(i) for i in ids]
    if stop.eos and ids and ids[-1] == lm.tokenizer.eos_token_id:
        ids = ids[:-1]
    text = lm.tokenizer.decode(ids, skip_special_tokens=False)
    return stop.cut(text).strip()


def decode_prediction(lm: LoadedModel, token_id: int) -> str:
    """The paper's cleaning of a predicted token: decode, cut at the first newline, strip."""
    return decode_answer(lm, [token_id], FIRST_TOKEN)


def decode_predictions(lm: LoadedModel, token_ids: torch.Tensor) -> list[str]:
    return [decode_prediction(lm, t) for t in token_ids.tolist()]
