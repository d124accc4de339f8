"""The explorer's only door into the engine: every model computation of ``taskvec explore`` is here.

The panels call the same functions as the CLI (``extract_task_vector``, ``extract`` for the other methods,
``predict_token_ids``, ``apply_task_vector``, ``project_to_vocab``, ``TaskVector`` files). The one thing the
engine does not give is the probability of the gold answer's first token at each patched layer
(``layer_sweep`` returns argmax tokens only); :func:`patched_grid` computes it with the engine's own patched
forward passes, and its argmax predictions are the sweep's (checked by the tests).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from taskvec.api.extraction import extract as extract_vector
from taskvec.api.extraction import extract_task_vector
from taskvec.api.patching import apply_task_vector, template_of
from taskvec.api.task_vector import TaskVector
from taskvec.core.decoding import decode_predictions
from taskvec.core.sites import replacements
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import next_token_logits, predict_token_ids
from taskvec.engine.interventions import intervene
from taskvec.engine.projection import projected_top_tokens
from taskvec.engine.shared_prefix import last_token_rows
from taskvec.errors import TaskvecError
from taskvec.models.adapter import returned_cache
from taskvec.models.loading import LoadedModel
from taskvec.models.tokens import answer_token_counts
from taskvec.prompts import PromptTemplate

GRID_ROWS = 64  # (layer, query) rows per last-token forward of the heatmap


def extract(
    lm: LoadedModel, demonstrations: Sequence[tuple[str, str]], template: PromptTemplate, dummies: Sequence[str] | None
) -> TaskVector:
    """theta at every layer (answers of several tokens allowed: theta is read at the query's ``->``)."""
    return extract_task_vector(lm, demonstrations, dummies or None, template=template, single_token_answers=False)


def extract_method(
    lm: LoadedModel,
    demonstrations: Sequence[tuple[str, str]],
    method: str,
    template: PromptTemplate,
    dummies: Sequence[str] | None,
) -> TaskVector:
    """The vector of ``method`` (an alias of :func:`taskvec.extract`: ``fv``, ``icv``, ``meandiff``...) with
    its default settings, in a :class:`TaskVector` that records how it is applied (a function vector at its
    default layer, an every-position method at every layer)."""
    return extract_vector(lm, demonstrations, method, dummy_queries=dummies or None, template=template)


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
    called between forward passes (it may raise to cancel).

    As in the engine's sweep, the keys and values of each query prompt without its last token are the same
    at every layer: they are computed once, then only the last token runs per layer (``GRID_ROWS`` rows of
    (layer, query) per forward), with full logits for the probabilities.
    """
    rows = encode(lm, [template.query_prompt(q) for q in queries])
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every query prompt needs at least two tokens")
    n_layers = lm.num_layers
    gold = torch.tensor([-1 if g is None else g for g in gold_ids], dtype=torch.long)
    ids = torch.empty(n_layers, len(rows), dtype=torch.long)
    probs = torch.full((n_layers, len(rows)), float("nan"))
    group_size = min(len(rows), GRID_ROWS)  # queries sharing one prefix forward
    per_forward = max(1, GRID_ROWS // group_size)  # layers per last-token forward
    steps = [(g, part) for g in chunks(len(rows), group_size) for part in chunks(n_layers, per_forward)]
    prefix, batch = None, None
    for done, (group, part) in enumerate(steps, start=1):
        if part.start == 0:  # a new group of queries: the keys and values of all but their last token
            batch = collate(lm, rows[group])
            prefix = returned_cache(
                lm.adapter.base_model(
                    input_ids=batch.input_ids[:, :-1],
                    attention_mask=batch.attention_mask[:, :-1],
                    position_ids=batch.position_ids[:, :-1],
                    use_cache=True,
                )
            )
        assert batch is not None
        ids[part, group], probs[part, group] = _last_token(lm, theta, batch, prefix, list(range(n_layers))[part],
                                                           gold[group])  # fmt: skip
        if step is not None:
            step(done / len(steps))
    predictions = [decode_predictions(lm, row) for row in ids]
    values = [[None if v != v else float(v) for v in row] for row in probs.tolist()]  # NaN -> None
    return predictions, values


def _last_token(lm: LoadedModel, theta: TaskVector, batch: Batch, prefix, chunk: list[int], gold: torch.Tensor):
    """Argmax ids and gold probabilities (len(chunk), n) of the batch's last tokens with theta[l] patched
    for each layer l of ``chunk``: one forward of n * len(chunk) rows over a fork of the prefix cache."""
    n, k = len(batch), len(chunk)
    last, cache = last_token_rows(batch, prefix, k)  # rows: query-major, then layer
    vectors = theta.vectors[chunk].repeat(n, 1)  # row q * k + i: layer chunk[i]
    with intervene(lm.adapter.layers, replacements(chunk * n, vectors)):
        logits = next_token_logits(lm, last, cache=cache).view(n, k, -1)
    probs = torch.full((k, n), float("nan"))
    known = gold >= 0
    if bool(known.any()):
        p = torch.softmax(logits[known], dim=-1)  # (known, k, V)
        index = gold[known].view(-1, 1, 1).expand(-1, k, 1)
        probs[:, known] = p.gather(2, index).squeeze(2).T
    return logits.argmax(dim=-1).T, probs


def layer_top_tokens(lm: LoadedModel, theta: TaskVector, k: int) -> list[list[tuple[str, float]]]:
    """The vocabulary projection (logit lens) of theta at every layer: ``k`` (token, logit) per layer."""
    return projected_top_tokens(lm, theta.vectors, k)


def apply_at(lm: LoadedModel, theta: TaskVector, queries: Sequence[str], layer: int | None = None) -> list[str]:
    """Answers with ``theta`` applied the way its method applies it (at ``layer``, default: its own)."""
    return apply_task_vector(lm, theta, queries, layer)


def task_vector_bytes(theta: TaskVector) -> bytes:
    """The vector (of any method) as a ``.safetensors`` file (the format of ``taskvec extract``)."""
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
    """An uploaded vector applied as its method applies it (a one-layer method at its stored layer) to
    ``queries``: (vector, patched, zero-shot)."""
    theta = load_task_vector(data)
    patched = apply_task_vector(lm, theta, queries)
    template = template_of(theta)
    zero_shot = greedy_answers(lm, [template.query_prompt(q) for q in queries])
    return theta, patched, zero_shot
