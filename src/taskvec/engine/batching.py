"""Tokenizing prompts and batching them with left padding and explicit position ids."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from taskvec.errors import PromptTooLongError
from taskvec.models.loading import LoadedModel


@dataclass
class Batch:
    """Left-padded prompts: the last column is every prompt's last token."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 0 on padding
    position_ids: torch.Tensor  # (B, T), 0 at the first real token

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def encode(lm: LoadedModel, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the model's prompt prefix, checked against the context length."""
    encoded = lm.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    prefix = lm.adapter.prefix_ids
    ids = [prefix + list(row) for row in encoded]
    limit = lm.adapter.max_positions
    if limit is not None:
        for prompt, row in zip(prompts, ids):
            if len(row) > limit:
                raise PromptTooLongError(
                    f"prompt of {len(row)} tokens is longer than the model's context of {limit} tokens "
                    f"(prompt starts {prompt[:60]!r}); use fewer or shorter demonstrations"
                )
    return ids


def collate(lm: LoadedModel, rows: Sequence[Sequence[int]]) -> Batch:
    """Left-pad token rows into one batch on the model's input device."""
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    device = lm.input_device
    return Batch(input_ids.to(device), mask.to(device), positions.to(device))


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` items."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def length_sorted_chunks(rows: Sequence[Sequence[int]], size: int) -> Iterator[list[int]]:
    """Index groups of at most ``size`` rows of similar length, to keep padding small."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for sl in chunks(len(order), size):
        yield order[sl]
