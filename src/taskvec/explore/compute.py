"""The explorer's only door into the engine: every model computation of ``taskvec explore`` is here.

The panels call the same functions as the CLI (``extract_task_vector``, ``predict_token_ids``,
``apply_task_vector``, ``project_to_vocab``, ``TaskVector`` files). The one thing the engine does not give is
the probability of the gold answer's first token at each patched layer (``layer_sweep`` returns argmax
tokens only); :func:`patched_grid` computes it with the engine's own patched forward passes, and its
argmax predictions are the sweep's (checked by the tests).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from taskvec.engine.batching import chunks, collate, encode
from taskvec.engine.extraction import extract_task_vector
from taskvec.engine.forward import decode_predictions, next_token_logits, patches_for_rows, predict_token_ids
from taskvec.engine.hooks import patch_last_position
from taskvec.engine.patching import apply_task_vector, template_of
from taskvec.engine.projection import projected_top_tokens
from taskvec.engine.prompts import PromptTemplate
from taskvec.engine.task_vector import TaskVector
from taskvec.engine.validation import answer_token_counts
from taskvec.models.loading import LoadedModel

GRID_ROWS = 64  # (layer, query) rows per patched forward of the heatmap


def extract(
    lm: LoadedModel, demonstrations: Sequence[tuple[str, str]], template: PromptTemplate, dummies: Sequence[str] | None
) -> TaskVector:
    """theta at every layer (answers of several tokens allowed: theta is read at the query's ``->``)."""
    return extract_task_vector(lm, demonstrations, dummies or None, template=template, single_token_answers=False)


def greedy_answers(lm: LoadedModel, prompts: Sequence[str]) -> list[str]:
    """The model's next token after each prompt, decoded as the paper scores it."""
    return decode_predictions(lm, predict_token_ids(lm, prompts))


def answer_tokens(lm: LoadedModel, template: PromptTemplate, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
    """The tokens each answer adds after its query prompt; [] when the answer changes the query's tokens."""
    counts = answer_token_counts(lm, pairs, template)
    tok = lm.tokenizer
    out = []
    for (x, y), count in zip(pairs, counts):
        if count < 1:
            out.append([])
            continue
        ids = tok([template.demonstration(x, y)], add_special_tokens=False)["input_ids"][0]
        out.append(list(ids[len(ids) - count :]))
    return out


@torch.no_grad()
def patched_grid(
    lm: LoadedModel,
    theta: TaskVector,
    template: PromptTemplate,
    queries: Sequence[str],
    gold_ids: Sequence[int | None],
    step: Callable[[float], None] | None = None,
) -> tuple[list[list[str]], list[list[float | None]]]:
    """For each layer l and query q: the greedy answer with theta[l] patched into ``q``'s last position,
    and the probability of ``gold_ids[q]`` (None where no gold token is known). ``step(fraction done)`` is
    called between forward passes (it may raise to cancel)."""
    layers = list(range(lm.num_layers))
    rows = encode(lm, [template.query_prompt(q) for q in queries])
    cells = [(layer, q) for layer in layers for q in range(len(queries))]  # layer-major
    ids = torch.empty(len(cells), dtype=torch.long)
    probs = torch.full((len(cells),), float("nan"))
    gold = torch.tensor([-1 if g is None else g for g in gold_ids], dtype=torch.long)
    for part in chunks(len(cells), GRID_ROWS):
        picked = cells[part]
        batch = collate(lm, [rows[q] for _, q in picked])
        vectors = torch.stack([theta.vectors[layer] for layer, _ in picked])
        with patch_last_position(lm.adapter.layers, patches_for_rows([layer for layer, _ in picked], vectors)):
            logits = next_token_logits(lm, batch)
        ids[part] = logits.argmax(dim=-1)
        wanted = gold[[q for _, q in picked]]
        known = wanted >= 0
        if bool(known.any()):
            p = torch.softmax(logits[known], dim=-1)
            chunk_probs = probs[part].clone()
            chunk_probs[known] = p.gather(1, wanted[known].unsqueeze(1)).squeeze(1)
            probs[part] = chunk_probs
        if step is not None:
            step(part.stop / len(cells))
    words = decode_predictions(lm, ids)
    n = len(queries)
    predictions = [words[i * n : (i + 1) * n] for i in layers]
    values = [None if v != v else float(v) for v in probs.tolist()]  # NaN -> None
    return predictions, [values[i * n : (i + 1) * n] for i in layers]


def layer_top_tokens(lm: LoadedModel, theta: TaskVector, k: int) -> list[list[tuple[str, float]]]:
    """The vocabulary projection (logit lens) of theta at every layer: ``k`` (token, logit) per layer."""
    return projected_top_tokens(lm, theta.vectors, k)


def apply_at(lm: LoadedModel, theta: TaskVector, queries: Sequence[str], layer: int | None = None) -> list[str]:
    return apply_task_vector(lm, theta, queries, layer)


def task_vector_bytes(theta: TaskVector) -> bytes:
    """The task vector as a ``.safetensors`` file (the format of ``taskvec extract``)."""
    with tempfile.TemporaryDirectory(prefix="taskvec-explore-") as folder:
        path = Path(folder) / "task_vector.safetensors"
        theta.save(path)
        return path.read_bytes()


def load_task_vector(data: bytes) -> TaskVector:
    """A task vector from the bytes of an uploaded file (checked as ``TaskVector.load`` checks files)."""
    with tempfile.TemporaryDirectory(prefix="taskvec-explore-") as folder:
        path = Path(folder) / "uploaded.safetensors"
        path.write_bytes(data)
        return TaskVector.load(path)


def apply_file(lm: LoadedModel, data: bytes, queries: Sequence[str]) -> tuple[TaskVector, list[str], list[str]]:
    """An uploaded task vector applied at its stored layer to ``queries``: (vector, patched, zero-shot)."""
    theta = load_task_vector(data)
    patched = apply_task_vector(lm, theta, queries)
    template = template_of(theta)
    zero_shot = greedy_answers(lm, [template.query_prompt(q) for q in queries])
    return theta, patched, zero_shot
