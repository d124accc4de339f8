"""Multi-token greedy decoding, optionally with an edit (e.g. theta) on the prompt's first forward.

The first forward runs the whole (left-padded) prompt batch, each row with its edit applied
(:func:`taskvec.engine.interventions.intervene`; theta replaces block ``L``'s output at the last prompt
position); its key/value cache then serves the following steps, which run one new token per row with no
edit, explicit position ids and an attention mask that grows by one column per step. Regular ICL and
zero-shot decoding go through the same function without edits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.decoding import DEFAULT_STOP, StopRule, decode_answer, special_token_ids
from taskvec.core.sites import Edit, replacements
from taskvec.engine.batching import Batch, collate, encode, length_sorted_chunks
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.interventions import intervene
from taskvec.engine.validation import check_strings
from taskvec.errors import TaskvecError
from taskvec.models.adapter import returned_cache
from taskvec.models.loading import LoadedModel

#: Upper bound of ``max_new_tokens``: answers of a task are short; longer runs are not what this is for.
MAX_NEW_TOKENS_LIMIT = 256

__all__ = ["DEFAULT_STOP", "StopRule", "decode_answer", "generate", "generate_ids"]


def check_max_new_tokens(max_new_tokens: int) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TaskvecError(f"max_new_tokens must be an integer 1..{MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise TaskvecError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")
    return max_new_tokens


def _stops(lm: LoadedModel, token_id: int, stop: StopRule) -> bool:
    if stop.eos and token_id == lm.tokenizer.eos_token_id:
        return True
    if stop.special and token_id in special_token_ids(lm):
        return True
    if not stop.stop_strings:
        return False
    text = lm.tokenizer.decode([token_id])
    return any(s in text for s in stop.stop_strings)


@torch.no_grad()
def _generate_batch(
    lm: LoadedModel,
    batch: Batch,
    edits: Sequence[Edit | None],
    max_new_tokens: int,
    stop: StopRule,
    step_edits: Sequence[Edit | None] = (),
) -> list[list[int]]:
    """Generated ids of each row of one batch, the stopping token included (it is cut by the caller).
    ``step_edits[i]`` (position -1: the one new token) is applied to row i at every generated token."""
    n = len(batch)
    kwargs = batch.model_inputs()
    if lm.adapter.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    with intervene(lm.adapter, edits):
        out = lm.model(**kwargs, use_cache=max_new_tokens > 1)
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    mask, position = batch.attention_mask, batch.position_ids[:, -1:]
    for step in range(max_new_tokens):
        next_ids = out.logits[:, -1, :].argmax(dim=-1)
        for row, token in enumerate(next_ids.tolist()):
            if not done[row]:
                generated[row].append(token)
                done[row] = _stops(lm, token, stop)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        position = position + 1
        kwargs = {"input_ids": next_ids[:, None].to(mask.device), "attention_mask": mask, "position_ids": position}
        if lm.adapter.accepts_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with intervene(lm.adapter, step_edits):
            out = lm.model(**kwargs, **lm.adapter.cache_inputs(returned_cache(out)))
    return generated


def generate_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 1,
    *,
    edits: Sequence[Edit | None] | None = None,
    patch_layers: Sequence[int] | None = None,
    patch_vectors: torch.Tensor | None = None,
    stop: StopRule = DEFAULT_STOP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    step_edits: Sequence[Edit | None] | None = None,
) -> list[list[int]]:
    """Greedy continuation ids of each prompt (stopping token included), ``edits[i]`` applied to row i on
    the first forward and ``step_edits[i]`` on each later one (the generated token's position);
    ``patch_layers``/``patch_vectors`` are short for replacing block outputs there."""
    check_max_new_tokens(max_new_tokens)
    if stop.max_tokens is not None:
        max_new_tokens = max(1, min(max_new_tokens, stop.max_tokens))
    rows = encode(lm, prompts)
    if patch_layers is not None and patch_vectors is not None:
        edits = replacements(check_layers(lm, patch_layers), patch_vectors)
    result: list[list[int]] = [[] for _ in rows]
    for group in length_sorted_chunks(rows, batch_size):
        own = [edits[i] for i in group] if edits is not None else []
        steps = [step_edits[i] for i in group] if step_edits is not None else []
        ids = _generate_batch(lm, collate(lm, [rows[i] for i in group]), own, max_new_tokens, stop, steps)
        for i, row_ids in zip(group, ids):
            result[i] = row_ids
    return result


def generate(
    lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 1, *, stop: StopRule = DEFAULT_STOP, **kwargs
) -> list[str]:
    """Decoded answers of :func:`generate_ids` (regular ICL or zero-shot when no edit is given)."""
    prompts = check_strings(prompts, "prompts")
    ids = generate_ids(lm, prompts, max_new_tokens, stop=stop, **kwargs)
    return [decode_answer(lm, row, stop) for row in ids]
