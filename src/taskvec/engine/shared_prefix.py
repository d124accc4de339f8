"""Groups of prompts that share their demonstrations: the common token prefix of a group runs once.

A test set of the paper's protocol is three prompts with the same demonstrations: two end in dummy
queries (for theta) and one in the real query (regular ICL). Their longest common *token* prefix (the
demonstrations, as tokenized inside the full prompts, so no boundary effect) is computed once per
group; each prompt then runs only its own suffix on a copy of that key/value cache. Rows are batched
by suffix length, so no padding sits between a prefix and its suffix: every row is exactly the
left-padded full prompt of the straightforward path (positions and sliding windows included).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.hooks import StopForward, capture_last_position
from taskvec.engine.numerics import check_finite
from taskvec.engine.vocab_argmax import top_two_gap
from taskvec.errors import TaskvecError
from taskvec.models.adapter import returned_cache
from taskvec.models.loading import LoadedModel


@dataclass
class GroupOutputs:
    """Per prompt (flattened in group order): block outputs at the last position and the greedy next token."""

    states: torch.Tensor  # (N, len(layers), H) float32 on the CPU; empty when no layers were asked
    token_ids: torch.Tensor  # (N,) long; -1 for prompts that were not asked to predict
    margins: torch.Tensor | None  # (N,) best minus second-best logit of the predictions (nan where none),
    # when asked for
    owner: torch.Tensor  # (N,) the group of each prompt


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token rows, leaving every row at least one token of its own."""
    shortest = min(len(r) for r in rows)
    length = 0
    while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


@torch.no_grad()
def run_prompt_groups(
    lm: LoadedModel,
    groups: Sequence[Sequence[str]],
    *,
    layers: Sequence[int] = (),
    predict: Sequence[Sequence[bool]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_margins: bool = False,
) -> GroupOutputs:
    """Run every prompt of every group, computing each group's common token prefix once.

    Returns the block outputs of every prompt at ``layers`` (last position) and, for prompts flagged in
    ``predict`` (same shape as ``groups``), the greedy next token. ``batch_size`` groups share a prefix
    forward; suffix forwards stop after the deepest of ``layers`` when no row of theirs predicts.
    """
    layers = check_layers(lm, layers)
    flags = [[False] * len(g) for g in groups] if predict is None else [list(map(bool, p)) for p in predict]
    if len(flags) != len(groups) or any(len(f) != len(g) for f, g in zip(flags, groups)):
        raise TaskvecError("predict must have one flag per prompt of every group")
    if any(not g for g in groups):
        raise TaskvecError("every group of prompts needs at least one prompt")
    flat_flags = [f for fs in flags for f in fs]
    if not layers and not any(flat_flags):
        raise TaskvecError("nothing to compute: give layers to capture or prompts to predict")
    rows = encode(lm, [p for g in groups for p in g])
    owner = [gi for gi, g in enumerate(groups) for _ in g]
    members: list[list[int]] = [[] for _ in groups]
    for i, gi in enumerate(owner):
        members[gi].append(i)
    prefix_len = [common_prefix_length([rows[i] for i in m]) for m in members]

    hidden = lm.model.config.get_text_config().hidden_size
    states = torch.zeros(len(rows), len(layers), hidden)
    token_ids = torch.full((len(rows),), -1, dtype=torch.long)
    margins = torch.full((len(rows),), torch.nan)
    order = sorted(range(len(groups)), key=lambda g: prefix_len[g])
    for part in chunks(len(order), batch_size):
        chunk = order[part]
        need_logits = any(flat_flags[i] for g in chunk for i in members[g])
        deepest = lm.num_layers - 1 if need_logits else max(layers)
        prefix_batch, cache = _prefix_forward(lm, [rows[members[g][0]][: prefix_len[g]] for g in chunk], deepest)
        # Suffix rows, batched by (suffix length, whether they predict).
        by_kind: dict[tuple[int, bool], list[tuple[int, int]]] = {}
        for local, g in enumerate(chunk):
            for i in members[g]:
                by_kind.setdefault((len(rows[i]) - prefix_len[g], flat_flags[i]), []).append((local, i))
        for (_, predicts), items in sorted(by_kind.items()):
            local_rows = torch.tensor([local for local, _ in items])
            index = [i for _, i in items]
            suffixes = [rows[i][prefix_len[owner[i]] :] for i in index]
            got, ids, gaps = _suffix_forward(
                lm, prefix_batch, cache, local_rows, suffixes, layers, predicts, with_margins
            )
            if layers:
                states[index] = got
            if predicts:
                token_ids[index] = ids
                if with_margins:
                    margins[index] = gaps
    return GroupOutputs(
        states=states, token_ids=token_ids, margins=margins if with_margins else None, owner=torch.tensor(owner)
    )


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A cache that shares ``cache``'s key/value tensors but can be changed without touching it.

    Selecting or repeating rows and appending tokens all re-bind a layer's ``keys``/``values`` to new
    tensors (transformers' dynamic and sliding-window layers never write into them), so copying the
    layer objects is enough: no tensor is copied until a forward or a selection makes a new one.
    """
    own = copy.copy(cache)
    own.layers = [copy.copy(layer) for layer in cache.layers]
    return own


def all_but_last_cache(lm: LoadedModel, batch: Batch) -> tuple[DynamicCache, int | None]:
    """Keys and values of every row's tokens but the last (what a last-token forward continues from), and how a
    block returns its output (None: a tensor; n: a tuple of n items, hidden state first)."""
    arity: list[int | None] = []

    def note_arity(module, args, output):
        arity.append(len(output) if isinstance(output, tuple) else None)

    handle = lm.adapter.layers[0].register_forward_hook(note_arity)
    try:
        out = lm.adapter.base_model(
            input_ids=batch.input_ids[:, :-1],
            attention_mask=batch.attention_mask[:, :-1],
            position_ids=batch.position_ids[:, :-1],
            use_cache=True,
        )
    finally:
        handle.remove()
    record(tokens=int(batch.attention_mask[:, :-1].sum()), padded_tokens=batch.attention_mask[:, :-1].numel(),
           blocks=lm.num_layers)  # fmt: skip
    return returned_cache(out), arity[0]


def last_token_rows(batch: Batch, prefix_cache: DynamicCache, k: int) -> tuple[Batch, DynamicCache]:
    """Each prompt's last token ``k`` times (prompt-major rows: prompt i is rows i*k .. i*k+k-1) and a fork of
    the cache of all the prompts' other tokens, repeated to match: k variants of one last-token forward."""
    cache = fork_cache(prefix_cache)
    if k > 1:
        cache.batch_repeat_interleave(k)
    step = Batch(
        input_ids=batch.input_ids[:, -1:].repeat_interleave(k, dim=0),
        attention_mask=batch.attention_mask.repeat_interleave(k, dim=0),
        position_ids=batch.position_ids[:, -1:].repeat_interleave(k, dim=0),
    )
    return step, cache


def _prefix_forward(lm: LoadedModel, prefixes: list[list[int]], deepest: int) -> tuple[Batch, DynamicCache]:
    """Key/value cache of the left-padded prefixes, for blocks ``0..deepest``."""
    batch = collate(lm, prefixes)
    cache = DynamicCache(config=lm.adapter.base_model.config)
    stop = capture_last_position(lm.adapter.layers, [deepest], {}, stop_after_last=True)
    early = deepest < lm.num_layers - 1
    with stop if early else contextlib.nullcontext(), contextlib.suppress(StopForward):
        lm.adapter.base_model(**batch.model_inputs(), **lm.adapter.cache_inputs(cache))
    tokens = int(batch.attention_mask.sum())
    record(tokens=tokens, padded_tokens=batch.attention_mask.numel(), blocks=deepest + 1)
    return batch, cache


def _suffix_forward(
    lm: LoadedModel,
    prefix: Batch,
    cache: DynamicCache,
    local_rows: torch.Tensor,
    suffixes: list[list[int]],
    layers: list[int],
    predicts: bool,
    with_margins: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Run equal-length suffixes after their groups' prefixes: (states (R, L, H), next token ids (R,),
    their margins (R,) when asked for)."""
    device = lm.input_device
    width = len(suffixes[0])
    rows = local_rows.to(device)
    own = fork_cache(cache)
    own.batch_select_indices(rows)
    step = torch.arange(1, width + 1, device=device)
    attention_mask = prefix.attention_mask[rows]
    inputs = {
        "input_ids": torch.tensor(suffixes, dtype=torch.long, device=device),
        "attention_mask": torch.cat(
            [attention_mask, torch.ones(len(suffixes), width, dtype=torch.long, device=device)], 1
        ),
        "position_ids": prefix.position_ids[rows, -1:] + step,
        **lm.adapter.cache_inputs(own),
    }
    store: dict[int, torch.Tensor] = {}
    ids = gaps = None
    if predicts:
        with capture_last_position(lm.adapter.layers, layers, store) if layers else contextlib.nullcontext():
            if lm.adapter.accepts_logits_to_keep:
                inputs["logits_to_keep"] = 1
            logits = check_finite(lm.model(**inputs).logits[:, -1, :].float(), "next-token logits", lm.dtype)
            ids = logits.argmax(dim=-1).cpu()
            gaps = top_two_gap(logits).cpu() if with_margins else None
        blocks = lm.num_layers
    else:
        blocks = max(layers) + 1
        with (
            capture_last_position(lm.adapter.layers, layers, store, stop_after_last=True),
            contextlib.suppress(StopForward),
        ):
            lm.adapter.base_model(**inputs)
    n_tokens = len(suffixes) * width
    record(tokens=n_tokens, padded_tokens=n_tokens, blocks=blocks, logit_rows=len(suffixes) if predicts else 0)
    got = None
    if layers:
        got = check_finite(
            torch.stack([store[layer].float().cpu() for layer in layers], dim=1), "hidden states", lm.dtype
        )
    return got, ids, gaps
