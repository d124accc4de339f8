"""The layer sweep: patched predictions at every layer, reusing the query's key/value cache.

Patching changes only the last position, so the keys and values of the query prompt *without* its
last token are the same for every layer. We compute them once, then run the last token alone for
each layer: each extra layer costs one token instead of a whole prompt.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.engine.batching import Batch, collate, encode
from taskvec.engine.forward import check_layers, check_queries, decode_predictions, next_token_logits, patches_for_rows
from taskvec.engine.hooks import patch_last_position
from taskvec.engine.patching import check_compatible, template_of
from taskvec.engine.prompts import PromptTemplate
from taskvec.engine.task_vector import TaskVector
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

DEFAULT_MAX_ROWS = 256  # rows of one last-token forward (bounds the (rows, vocab) logits tensor)


@torch.no_grad()
def sweep_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: torch.Tensor,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> torch.Tensor:
    """Greedy next token of prompt i with ``vectors[i, l]`` patched at block l, for each l in ``layers``.

    ``vectors`` is (N, num_layers, H). Returns (len(layers), N). Prompts are processed in groups of up to
    ``max_rows``; within a group, the key/value cache of all tokens but the last is computed once.
    """
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    rows = encode(lm, prompts)
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached sweep")
    out = torch.empty(len(layers), len(rows), dtype=torch.long)
    group_size = min(len(rows), max_rows)  # prompts sharing one prefix forward
    per_forward = max(1, max_rows // group_size)  # layers per last-token forward
    for start in range(0, len(rows), group_size):
        idx = list(range(start, min(len(rows), start + group_size)))
        batch = collate(lm, [rows[i] for i in idx])
        prefix_cache = _prefix_cache(lm, batch)
        for l0 in range(0, len(layers), per_forward):
            chunk = layers[l0 : l0 + per_forward]
            ids = _last_token_patched(lm, batch, prefix_cache, vectors[idx], chunk)  # (len(idx), len(chunk))
            out[l0 : l0 + len(chunk), idx[0] : idx[-1] + 1] = ids.T
    return out


def _prefix_cache(lm: LoadedModel, batch: Batch):
    out = lm.adapter.base_model(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=batch.position_ids[:, :-1],
        use_cache=True,
    )
    return out.past_key_values


def _last_token_patched(lm: LoadedModel, batch: Batch, prefix_cache, vectors: torch.Tensor, layers: list[int]):
    """One forward of the last token for every (prompt, layer) pair, rows ordered prompt-major."""
    n, k = len(batch), len(layers)
    cache = copy.deepcopy(prefix_cache)
    if k > 1:
        cache.batch_repeat_interleave(k)
    step = Batch(
        input_ids=batch.input_ids[:, -1:].repeat_interleave(k, dim=0),
        attention_mask=batch.attention_mask.repeat_interleave(k, dim=0),
        position_ids=batch.position_ids[:, -1:].repeat_interleave(k, dim=0),
    )
    row_layers = layers * n
    row_vectors = vectors[:, layers, :].reshape(n * k, -1)
    with patch_last_position(lm.adapter.layers, patches_for_rows(row_layers, row_vectors)):
        logits = next_token_logits(lm, step, past_key_values=cache)
    return logits.argmax(dim=-1).view(n, k)


@dataclass
class SweepResult:
    """Predictions (and accuracy when answers were given) of a task vector at each layer."""

    layers: list[int]
    predictions: list[list[str]]  # [layer index][query index]
    accuracy: list[float] | None = None

    @property
    def best_layer(self) -> int | None:
        """The layer with the best accuracy, the first one on ties."""
        if self.accuracy is None:
            return None
        best = max(range(len(self.layers)), key=lambda i: (self.accuracy[i], -i))
        return self.layers[best]


def layer_sweep(
    lm: LoadedModel,
    task_vector: TaskVector,
    queries: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    template: PromptTemplate | None = None,
) -> SweepResult:
    """Patch ``task_vector`` at each layer into each query; score against ``answers`` (exact match)."""
    check_compatible(lm, task_vector)
    queries = check_queries(queries)
    if answers is not None and len(answers) != len(queries):
        raise TaskvecError(f"got {len(queries)} queries but {len(answers)} answers; expected one answer per query")
    template = template or template_of(task_vector)
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    prompts = [template.query_prompt(q) for q in queries]
    vectors = task_vector.vectors.unsqueeze(0).expand(len(prompts), -1, -1)
    ids = sweep_token_ids(lm, prompts, vectors, layers)
    predictions = [decode_predictions(lm, row) for row in ids]
    accuracy = None
    if answers is not None:
        gold = [a.strip() for a in answers]
        accuracy = [sum(p == g for p, g in zip(row, gold)) / len(gold) for row in predictions]
    return SweepResult(layers=layers, predictions=predictions, accuracy=accuracy)
