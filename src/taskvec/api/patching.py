"""Applying a vector file to queries the way its method applies it: the method is rebuilt by the registry
from the name and settings the file records (a task vector replaces block L's output at the bare query's last
token; a function vector is added there; a mean difference is added at every position of each layer of its
range; an In-Context Vector steers every position)."""

from __future__ import annotations

from collections.abc import Sequence

from taskvec.api.compat import VectorsWithMetadata, check_compatible
from taskvec.core.answering import DEFAULT_MODE, step_edits, stop_rule, with_steps
from taskvec.core.decoding import StopRule, decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.methods import acting_layers, edits_at, method_for
from taskvec.core.sites import Edit
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.validation import check_queries
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate
from taskvec.runtime import make_executor


def template_of(task_vector: VectorsWithMetadata) -> PromptTemplate:
    """The prompt template stored with the task vector (the default one when none is stored)."""
    stored = task_vector.metadata.get("template")
    if not stored:
        return PromptTemplate()
    if not isinstance(stored, dict) or not all(
        k in ("query", "separator", "answer_prefix", "input_prefix") and isinstance(v, str) for k, v in stored.items()
    ):
        raise TaskvecError(
            f"task vector metadata has template {stored!r}; expected an object with string fields "
            "query, separator, answer_prefix and optionally input_prefix"
        )
    return PromptTemplate(**stored)


def vector_method(task_vector: VectorsWithMetadata):
    """The method that applies ``task_vector``: the registry's, from the recorded name and settings."""
    meta = task_vector.metadata
    return method_for(str(meta.get("method", "task_vector")), meta.get("settings") or {})


def vector_edits(task_vector: VectorsWithMetadata, layer: int | None = None) -> list[Edit]:
    """The edits of ``task_vector`` at ``layer`` (default: its stored layer for a one-layer method; the layers
    of its range for an every-position method)."""
    method = vector_method(task_vector)
    chosen = task_vector.layer if layer is None and method.acts == "last" else layer
    if method.acts == "last" and chosen is None:
        raise TaskvecError("no layer given and this task vector has no chosen layer; pass layer=...")
    num_layers = task_vector.vectors.shape[0]
    for at in acting_layers(method, num_layers, chosen):
        if not 0 <= at < num_layers:
            raise TaskvecError(f"layer {at!r} is out of range: this task vector has layers 0..{num_layers - 1}")
    return edits_at(method, task_vector.vectors, chosen)


def patch_inputs(
    lm: LoadedModel,
    task_vector: VectorsWithMetadata,
    queries: Sequence[str],
    layer: int | None,
    template: PromptTemplate | None,
) -> tuple[list[str], list[list[Edit]]]:
    """The checked bare query prompts and the vector's edits for each (at ``layer``, default: the vector's
    own): what applying ``task_vector`` to ``queries`` needs, for one-token and multi-token answers."""
    check_compatible(lm, task_vector)
    queries = check_queries(queries)
    if layer is not None:
        check_layers(lm, [layer])
    edits = vector_edits(task_vector, layer)
    check_layers(lm, sorted({e.site.layer for e in edits}))
    template = template or template_of(task_vector)
    prompts = [template.query_prompt(q) for q in queries]
    return prompts, [edits] * len(prompts)


def apply_task_vector(
    lm: LoadedModel,
    task_vector: VectorsWithMetadata,
    queries: Sequence[str],
    layer: int | None = None,
    *,
    template: PromptTemplate | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    executor: Executor | None = None,
) -> list[str]:
    """Zero-shot answers to ``queries`` with theta patched in at ``layer``.

    The bare query prompt (``example:{x}->``) is run; the output of decoder block ``layer`` at the
    last position is REPLACED by theta (the whole residual stream there), and the forward pass goes
    on. Returns the greedy next token of each query, decoded and stripped. ``executor``: how the model
    is run (default: the fast executor).
    """
    prompts, edits = patch_inputs(lm, task_vector, queries, layer, template)
    executor = executor or make_executor(lm, "fast", batch_size)
    return decode_predictions(lm, executor.predict(prompts, edits).ids)


def apply_generate(
    lm: LoadedModel,
    task_vector: VectorsWithMetadata,
    queries: Sequence[str],
    max_new_tokens: int = 1,
    *,
    layer: int | None = None,
    template: PromptTemplate | None = None,
    stop: StopRule | None = None,
    mode: str = DEFAULT_MODE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    executor: Executor | None = None,
) -> list[str]:
    """Answers to ``queries`` with ``task_vector`` patched at ``layer`` (default: its stored layer),
    decoded greedily up to ``max_new_tokens`` tokens.

    ``template``: how the queries are written (default: the vector's own template). ``stop``: default
    :func:`default_stop_rule` (a newline or the template's own text ends an answer, and so do punctuation no
    demonstrated answer has and one token past the longest demonstrated answer; special tokens never enter
    one). ``mode``: where the vector acts while decoding (:mod:`taskvec.core.answering`; default ``first``,
    the paper's single patch, measured best). With one token the mode makes no difference."""
    template = template or template_of(task_vector)
    prompts, edits = patch_inputs(lm, task_vector, queries, layer, template)
    executor = executor or make_executor(lm, "fast", batch_size)
    steps = step_edits(executor, prompts, edits, mode) if max_new_tokens > 1 else None
    stop = stop or default_stop_rule(lm, task_vector, template)
    return executor.generate(prompts, max_new_tokens, with_steps(edits, steps), stop)


def demonstrated_answers(task_vector: VectorsWithMetadata) -> list[str]:
    """The answers of the demonstrations a vector was extracted from (recorded in its metadata), if any."""
    meta = task_vector.metadata
    sets = meta.get("demonstration_sets") or ([meta["demonstrations"]] if meta.get("demonstrations") else [])
    return [str(pair[1]) for demos in sets for pair in demos if isinstance(pair, (list, tuple)) and len(pair) == 2]


def default_stop_rule(lm: LoadedModel, task_vector: VectorsWithMetadata, template: PromptTemplate) -> StopRule:
    """``demos`` (the template's format, plus the punctuation and length of the demonstrated answers: the best
    stop rule measured, docs/multitoken.md) when the vector records its demonstrations, else ``format``."""
    answers = demonstrated_answers(task_vector)
    if not answers:
        return stop_rule("format", template)
    return stop_rule("demos", template, answers, lm.tokenizer)
