"""Extracting a task vector from demonstrations (theta is defined in :mod:`taskvec.core.methods.task_vector`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.api.compat import model_metadata
from taskvec.api.task_vector import TaskVector, sha256_of_json
from taskvec.core.interfaces import Executor
from taskvec.core.methods import TASK_VECTOR, FunctionVectorMethod, TaskVectorMethod, method_for, method_name
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.validation import check_demonstrations
from taskvec.errors import TaskvecError
from taskvec.heads.attribution import head_attribution
from taskvec.heads.examples import IclExample, shuffle_labels
from taskvec.models.loading import LoadedModel
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate
from taskvec.runtime import make_executor


def mean_states(
    lm: LoadedModel,
    prompt_groups: Sequence[Sequence[str]],
    layers: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """theta of each group of dummy-query prompts: the mean last-position block output, (groups,
    len(layers), H), computed by the fast executor (``shared_prefix``: each group's demonstrations run
    once) or the plain one."""
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    executor = make_executor(lm, "fast" if shared_prefix else "plain", batch_size)
    return TASK_VECTOR.from_prompts(executor, prompt_groups, layers)


def extract_task_vector(
    lm: LoadedModel,
    demonstrations: Sequence[tuple[str, str]],
    dummy_queries: Sequence[str] | None = None,
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    n_dummy: int = 2,
    single_token_answers: bool = True,
    executor: Executor | None = None,
) -> TaskVector:
    """theta(S) at every layer, averaged over ICL prompts that end in dummy queries.

    Pass ``dummy_queries`` drawn from the task's inputs, apart from the demonstrations and the real
    queries (the paper's protocol). Without them, each of the last ``n_dummy`` demonstrations is held
    out in turn and its input becomes the dummy query of a prompt made of the other demonstrations: a
    dummy query whose answer stands in the prompt makes a much weaker task vector.

    ``single_token_answers=False`` accepts demonstrations whose answers span several tokens (for
    multi-token decoding with :meth:`TaskVector.apply`); the paper's protocol uses one-token answers.
    ``executor``: how the model is run (default: the fast executor).
    """
    demonstrations = check_demonstrations(lm, demonstrations, template, single_token=single_token_answers)
    if dummy_queries is not None:
        if isinstance(dummy_queries, str) or not dummy_queries:
            raise TaskvecError(f"dummy_queries must be a non-empty list of strings, got {dummy_queries!r}")
        prompts = [template.icl_prompt(demonstrations, q) for q in dummy_queries]
    elif len(demonstrations) < 2:
        raise TaskvecError("with a single demonstration, pass dummy_queries (inputs of the task not in the prompt)")
    else:
        held_out = range(max(0, len(demonstrations) - n_dummy), len(demonstrations))
        dummy_queries = [demonstrations[i][0] for i in held_out]
        prompts = [
            template.icl_prompt(demonstrations[:i] + demonstrations[i + 1 :], demonstrations[i][0]) for i in held_out
        ]
    executor = executor or make_executor(lm, "fast")
    vectors = TASK_VECTOR.from_prompts(executor, [prompts], range(lm.num_layers))[0]
    metadata = {
        **model_metadata(lm),
        "template": template.to_dict(),
        "demonstrations": [list(d) for d in demonstrations],
        "demonstrations_sha256": sha256_of_json([list(d) for d in demonstrations]),
        "dummy_queries": list(dummy_queries),
    }
    return TaskVector(vectors=vectors, metadata=metadata)


@dataclass(frozen=True)
class Demonstrations:
    """One demonstration set (what :class:`taskvec.core.interfaces.DemoSet` asks of it)."""

    demo_tuples: list[tuple[str, str]]
    dummies: tuple[str, ...]


def extract(
    lm: LoadedModel,
    demonstrations: Sequence[tuple[str, str]],
    method: str = "tv",
    *,
    dummy_queries: Sequence[str] | None = None,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    layer: int | None = None,
    executor: Executor | None = None,
    **settings,
) -> TaskVector:
    """A vector of ``method`` (``tv``, ``fv``, ``icv``, ``meandiff``, ``shift`` or a full name) from
    ``demonstrations``, at every layer, in a :class:`TaskVector` that records how to apply it.

    ``settings`` configure how the vector is applied: ``strength`` (ICV's lambda), ``scale`` (mean difference,
    ICL shift, function vector), ``layers`` (the layers an every-position method acts at; default all),
    ``k`` (the function vector's heads). ``layer``: the layer a one-layer method acts at (a task vector's is
    usually chosen by :func:`taskvec.layer_sweep`; a function vector's default is a third of the depth).
    Without ``dummy_queries``, the last demonstrations are held out in turn as dummy queries (as
    :func:`extract_task_vector` does). Answers of several tokens are accepted."""
    name = method_name(method)
    if name == TaskVectorMethod.name:
        if settings:
            raise TaskvecError(f"a task vector takes no settings, got {sorted(settings)}")
        vector = extract_task_vector(lm, demonstrations, dummy_queries, template=template, single_token_answers=False,
                                     executor=executor)  # fmt: skip
        vector.layer = layer
        return vector
    demonstrations = check_demonstrations(lm, demonstrations, template, single_token=False)
    executor = executor or make_executor(lm, "fast")
    if name == FunctionVectorMethod.name:
        return extract_function_vector(executor, demonstrations, template, layer, **settings)
    dummies = tuple(dummy_queries) if dummy_queries else tuple(x for x, _ in demonstrations[-2:])
    if layer is not None:  # an every-position method at one layer: its range is that layer
        settings = {**settings, "layers": check_layers(lm, [layer])}
    method_object = method_for(name, settings)
    demo_set = Demonstrations([tuple(d) for d in demonstrations], dummies)
    vectors = method_object.vectors(executor, template, [demo_set], range(lm.num_layers))[0]
    metadata = {
        **model_metadata(lm),
        "method": name,
        "settings": method_object.settings(),
        "template": template.to_dict(),
        "demonstrations": [list(d) for d in demonstrations],
        "demonstrations_sha256": sha256_of_json([list(d) for d in demonstrations]),
        "dummy_queries": list(dummies),
    }
    return TaskVector(vectors=vectors, layer=None, metadata=metadata)


def extract_function_vector(
    executor: Executor,
    demonstrations: Sequence[tuple[str, str]],
    template: PromptTemplate,
    layer: int | None,
    k: int = 10,
    scale: float = 1.0,
) -> TaskVector:
    """A function vector from one demonstration set: head attribution on leave-one-out ICL prompts (each
    demonstration the query of the others) against the same prompts with shuffled labels; the top ``k``
    heads' mean outputs, projected and summed, added ``scale`` times at ``layer`` (default: a third of the
    depth). The dev-chosen function vector of a task is ``taskvec extract --method fv``."""
    lm = executor.lm
    if len(demonstrations) < 3:
        raise TaskvecError("a function vector needs at least 3 demonstrations (each is the query of the others)")
    clean = [IclExample(tuple(demonstrations[:i] + demonstrations[i + 1 :]), x, y)
             for i, (x, y) in enumerate(demonstrations)]  # fmt: skip
    rng = random.Random(0)
    corrupted = [shuffle_labels(e, rng) for e in clean]
    attribution = head_attribution(executor, clean, corrupted, template)
    heads = attribution.top_heads(min(int(k), int((~torch.isnan(attribution.aie)).sum())))
    at = lm.num_layers // 3 if layer is None else check_layers(lm, [layer])[0]
    method = FunctionVectorMethod(heads, attribution.mean_outputs.attention_rms, scale)
    prompts = [[template.icl_prompt(list(e.demonstrations), e.query) for e in clean]]
    vector = method.from_prompts(executor, prompts)[0] * float(scale)
    metadata = {
        **model_metadata(lm),
        "method": FunctionVectorMethod.name,
        "settings": {"applied_scale": 1.0},
        "template": template.to_dict(),
        "heads": [list(h) for h in heads],
        "k": len(heads),
        "scale": float(scale),
        "demonstrations": [list(d) for d in demonstrations],
        "demonstrations_sha256": sha256_of_json([list(d) for d in demonstrations]),
    }
    return TaskVector(vectors=vector[None, :].expand(lm.num_layers, -1).clone(), layer=at, metadata=metadata)
