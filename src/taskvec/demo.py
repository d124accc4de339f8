"""``taskvec demo``: one task, 5 demonstrations, and ICL / task vector / zero-shot answers side by side."""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskvec.api.extraction import extract_task_vector
from taskvec.api.patching import apply_task_vector
from taskvec.api.sweep import layer_sweep
from taskvec.core.decoding import decode_predictions
from taskvec.engine.forward import predict_token_ids
from taskvec.models.loading import LoadedModel
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task
from taskvec.tasks.scoring import is_correct


@dataclass
class DemoResult:
    task: str
    demonstrations: list[tuple[str, str]]
    layer: int
    layer_accuracy: float  # accuracy on the held-out queries used to choose the layer
    rows: list[dict]  # query, gold, regular, task_vector, zero_shot


def run_demo(lm: LoadedModel, task_name: str = "to_upper", shots: int = 5, n_queries: int = 8, seed: int = 0):
    """Extract theta from ``shots`` demonstrations, choose its layer on other queries, answer new ones."""
    prepared = prepare_task(lm, builtin_task(task_name))
    pairs = list(prepared.pairs)
    random.Random(seed).shuffle(pairs)
    demos, dummies = pairs[:shots], pairs[shots : shots + 2]
    rest = pairs[shots + 2 :]
    new, choose = rest[:n_queries], rest[n_queries : n_queries + 30] or rest[:n_queries]
    template = prepared.template
    demo_pairs = [(p.input, p.output) for p in demos]
    theta = extract_task_vector(
        lm,
        demo_pairs,
        [p.input for p in dummies],
        template=template,
        single_token_answers=prepared.single_token_answers,
    )
    sweep = layer_sweep(lm, theta, [p.input for p in choose], [p.output for p in choose])
    theta.layer = sweep.best_layer
    queries = [p.input for p in new]
    icl_prompts = [template.icl_prompt(demo_pairs, q) for q in queries]
    regular = decode_predictions(lm, predict_token_ids(lm, icl_prompts))
    patched = apply_task_vector(lm, theta, queries)
    zero_shot = decode_predictions(lm, predict_token_ids(lm, [template.query_prompt(q) for q in queries]))
    rows = []
    for pair, r, t, z in zip(new, regular, patched, zero_shot):
        rows.append({"query": pair.input, "gold": pair.output, "regular": r, "task_vector": t, "zero_shot": z,
                     "correct": {k: is_correct(v, pair, prepared.task.scoring)
                                 for k, v in (("regular", r), ("task_vector", t), ("zero_shot", z))}})  # fmt: skip
    best_index = sweep.layers.index(theta.layer)
    return DemoResult(task_name, demo_pairs, theta.layer, sweep.accuracy[best_index], rows)
