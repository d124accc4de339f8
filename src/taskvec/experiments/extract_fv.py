"""``taskvec extract --method fv|icv|meandiff|shift``: a task's function vector (or an every-position method's
vector) in the task-vector file format.

Head attribution on ``fv_prompts`` clean ICL prompts drawn from the pool (and the same prompts with their labels
shuffled: :func:`taskvec.heads.examples.attribution_examples`, the recipe of ``run`` and ``heads`` too),
then the layer, k and scale with the best accuracy on the held-out dev pairs (``layer`` given: only that
layer). The file stores ``scale * v`` at every layer (the vector does not depend on the layer it is added
at), the chosen layer, and in its metadata the heads, k, scale and the dev grid.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from taskvec.api.compat import model_metadata
from taskvec.api.task_vector import TaskVector
from taskvec.core.interfaces import DemoSet, Executor
from taskvec.experiments.every_position import EverySettings, choose_config, configured
from taskvec.heads.attribution import head_attribution
from taskvec.heads.examples import attribution_examples, sample_icl_examples
from taskvec.heads.selection import select_function_vector
from taskvec.models.loading import LoadedModel
from taskvec.tasks.definitions import Pair
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.scoring import is_correct

logger = logging.getLogger(__name__)


def extract_function_vector(
    lm: LoadedModel, prepared: PreparedTask, config, dev: Sequence[Pair], pool: Sequence[Pair], executor: Executor
) -> TaskVector:
    """The function vector of ``prepared`` (``config``: an :class:`taskvec.experiments.extract.ExtractConfig`)."""
    task, template = prepared.task, prepared.template
    tuples = [(p.input, p.output) for p in pool]
    shots = min(config.shots, len(tuples) - 1)
    clean = sample_icl_examples(tuples, config.fv_prompts, shots, seed=config.seed)
    clean, corrupted = attribution_examples(clean, config.fv_prompts, random.Random(config.seed + 1))
    attribution = head_attribution(executor, clean, corrupted, template, attribution=config.attribution)

    def score(predictions: Sequence[str]) -> float:
        return sum(is_correct(p, d, task.scoring) for p, d in zip(predictions, dev)) / len(dev)

    layers = None if config.layer is None else [config.layer]
    fv = select_function_vector(executor, attribution, template, [p.input for p in dev], [p.output for p in dev],
                                layers=layers, scorer=score)  # fmt: skip
    applied = (fv.scale * fv.vector)[None, :].expand(lm.num_layers, -1).clone()
    best = fv.selection["best_dev_accuracy"]
    metadata = {
        **model_metadata(lm),
        "method": "function_vector",
        "template": template.to_dict(),
        "heads": [list(h) for h in fv.heads],
        "k": fv.k,
        "scale": fv.scale,
        "norm_corrected": fv.norm_corrected,
        "unscaled_norm": float(fv.vector.norm()),
        "task": task.name,
        "task_source": task.source,
        "scoring": task.scoring,
        "shots": shots,
        "fv_prompts": config.fv_prompts,
        "seed": config.seed,
        "layer_selection": "auto" if config.layer is None else "given",
        "dev_inputs": [p.input for p in dev],
        "dev_accuracy": best,
        "dev_grid": fv.selection["grid"],
        "n_usable_pairs": len(dev) + len(pool),
    }
    logger.info("task %s: function vector of %d heads at layer %d, scale %g, dev accuracy %.2f on %d pairs",
                task.name, fv.k, fv.layer, fv.scale, best, len(dev))  # fmt: skip
    return TaskVector(vectors=applied, layer=fv.layer, metadata=metadata)


def extract_every_position(
    lm: LoadedModel, prepared: PreparedTask, config, dev: Sequence[Pair], sets: Sequence[DemoSet], executor: Executor
) -> TaskVector:
    """An every-position method's vector (``config.method``: ICV, mean difference, ICL shift) averaged over the
    demonstration ``sets``; its strength and layers chosen on ``dev`` as ``taskvec run`` chooses them
    (:mod:`taskvec.experiments.every_position`)."""
    task, template = prepared.task, prepared.template
    layers = list(range(lm.num_layers))
    vector = configured(config.method, 1.0).vectors(executor, template, sets, layers).mean(0)
    prompts = [template.query_prompt(p.input) for p in dev]

    def score(predictions: Sequence[str]) -> float:
        return sum(is_correct(p, d, task.scoring) for p, d in zip(predictions, dev)) / len(dev)

    found = choose_config(executor, config.method, prompts, vector[None].expand(len(dev), -1, -1), score,
                          EverySettings(), fixed_layer=config.layer)  # fmt: skip
    method = found.method()
    settings = method.settings()
    if found.layer is not None:
        settings["layers"] = [found.layer]
    metadata = {
        **model_metadata(lm),
        "method": config.method,
        "settings": settings,
        "template": template.to_dict(),
        "demonstration_sets": [[list(d) for d in s.demo_tuples] for s in sets],
        "dummy_queries": [d for s in sets for d in s.dummies],
        "task": task.name,
        "task_source": task.source,
        "scoring": task.scoring,
        "shots": config.shots,
        "n_sets": config.n_sets,
        "seed": config.seed,
        "layer_selection": "auto" if config.layer is None else "given",
        "dev_inputs": [p.input for p in dev],
        "dev_accuracy": found.dev_accuracy,
        "dev_grid": found.grid,
        "n_usable_pairs": len(prepared.pairs),
    }
    logger.info("task %s: %s at %s, strength %g, dev accuracy %.2f on %d pairs", task.name, config.method,
                "every layer" if found.layer is None else f"layer {found.layer}", found.strength, found.dev_accuracy,
                len(dev))  # fmt: skip
    return TaskVector(vectors=vector, layer=None, metadata=metadata)
