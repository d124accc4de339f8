"""Multi-token greedy decoding, optionally with edits (e.g. theta, or a vector added at every position).

The first forward (the prefill) runs the whole (left-padded) prompt batch with each row's edits at prompt
positions (:func:`taskvec.engine.interventions.intervene`; theta replaces block ``L``'s output at the last
prompt position); its key/value cache then serves the following steps, which run one new token per row with
the edits at generated positions, explicit position ids and an attention mask that grows by one column per
step. An edit at prompt positions is made once, in the prefill, and lives on in the cache; an edit at
generated positions is made on each new token (:mod:`taskvec.core.sites`). :func:`generate_ids_by_rerun`
runs the whole sequence again for every token instead (no cache): the reference the cached loop is tested
against. Regular ICL and zero-shot decoding go through the same function without edits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.decoding import DEFAULT_STOP, StopRule, decode_answer, special_token_ids
from taskvec.core.sites import RowEdits, replacements
from taskvec.engine.batching import Batch, collate, encode, length_sorted_chunks
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.interventions import Span, intervene
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


def _next_row_tokens(lm, logits_rows, generated, done, stop) -> None:
    for row, token in enumerate(logits_rows.tolist()):
        if not done[row]:
            generated[row].append(token)
            done[row] = _stops(lm, token, stop)


@torch.no_grad()
def _generate_batch(
    lm: LoadedModel, batch: Batch, edits: Sequence[RowEdits], max_new_tokens: int, stop: StopRule
) -> list[list[int]]:
    """Generated ids of each row of one batch, the stopping token included (it is cut by the caller)."""
    n = len(batch)
    kwargs = batch.model_inputs()
    if lm.adapter.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    span = Span()  # the prefill: every column is a prompt token
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    mask, position = batch.attention_mask, batch.position_ids[:, -1:]
    with intervene(lm.adapter, edits, span=span):
        out = lm.model(**kwargs, use_cache=max_new_tokens > 1)
        span.prompt_end = 0  # every later forward runs one generated token
        for step in range(max_new_tokens):
            next_ids = out.logits[:, -1, :].argmax(dim=-1)
            _next_row_tokens(lm, next_ids, generated, done, stop)
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            position = position + 1
            kwargs = {"input_ids": next_ids[:, None].to(mask.device), "attention_mask": mask, "position_ids": position}
            if lm.adapter.accepts_logits_to_keep:
                kwargs["logits_to_keep"] = 1
            out = lm.model(**kwargs, **lm.adapter.cache_inputs(returned_cache(out)))
    return generated


@torch.no_grad()
def _rerun_batch(
    lm: LoadedModel, batch: Batch, edits: Sequence[RowEdits], max_new_tokens: int, stop: StopRule
) -> list[list[int]]:
    """As :func:`_generate_batch`, but every token comes from a forward over the whole sequence (the padded
    prompt and the tokens generated so far), with no cache: the prompt columns get the prompt-position edits
    and the generated columns the generated-position edits, in every forward."""
    n, width = len(batch), batch.input_ids.shape[1]
    span = Span(prompt_end=width)
    generated: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    ids, mask, positions = batch.input_ids, batch.attention_mask, batch.position_ids
    with intervene(lm.adapter, edits, span=span):
        for step in range(max_new_tokens):
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            next_ids = out.logits[:, -1, :].argmax(dim=-1)
            _next_row_tokens(lm, next_ids, generated, done, stop)
            if all(done) or step == max_new_tokens - 1:
                break
            ids = torch.cat([ids, next_ids[:, None].to(ids.device)], dim=1)
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    return generated


def generate_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 1,
    *,
    edits: Sequence[RowEdits] | None = None,
    patch_layers: Sequence[int] | None = None,
    patch_vectors: torch.Tensor | None = None,
    stop: StopRule = DEFAULT_STOP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rerun: bool = False,
) -> list[list[int]]:
    """Greedy continuation ids of each prompt (stopping token included), ``edits[i]`` (an edit, several or
    None) applied to row i at the positions their sites name; ``patch_layers``/``patch_vectors`` are short
    for replacing block outputs at the last prompt token. ``rerun``: no key/value cache, the whole sequence
    run again for each token (the reference)."""
    check_max_new_tokens(max_new_tokens)
    if stop.max_tokens is not None:
        max_new_tokens = max(1, min(max_new_tokens, stop.max_tokens))
    rows = encode(lm, prompts)
    if patch_layers is not None and patch_vectors is not None:
        edits = replacements(check_layers(lm, patch_layers), patch_vectors)
    run_batch = _rerun_batch if rerun else _generate_batch
    result: list[list[int]] = [[] for _ in rows]
    for group in length_sorted_chunks(rows, batch_size):
        own = [edits[i] for i in group] if edits is not None else []
        ids = run_batch(lm, collate(lm, [rows[i] for i in group]), own, max_new_tokens, stop)
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
