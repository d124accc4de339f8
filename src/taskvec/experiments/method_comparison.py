"""Function vectors and the controls of ``../docs/function-vectors.md`` beside the task vector, for one task.

``taskvec run --methods tv,fv`` adds to each task's evaluation (:func:`taskvec.experiments.main_experiment.
evaluate_task`):

- head attribution on the dev sets (clean: their ICL prompts; corrupted: the same with labels shuffled), and
  the function vector's layer, k and scale chosen on the dev queries (the task's own scoring rule);
- on the test sets: the function vector added to the bare queries; a random vector of each method's norm
  applied the same way; shuffled-label ICL alone and with each method's vector; every one scored on all items
  and on the items regular ICL gets right, with the fraction of ICL recovered.

The task-agnostic control (each method's vector averaged over the *other* tasks) needs every task: the runner
computes it at the end (:mod:`taskvec.experiments.task_agnostic`) from the vectors each task saves.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.methods import TASK_VECTOR, FunctionVectorMethod
from taskvec.core.sites import PerPrompt
from taskvec.engine.accounting import stage
from taskvec.experiments.every_position import EverySettings, evaluate_every_position
from taskvec.heads.attribution import HeadAttribution, head_attribution
from taskvec.heads.examples import IclExample, attribution_examples, shuffled
from taskvec.heads.function_vector import FunctionVector, random_like, random_same_norm
from taskvec.heads.selection import DEFAULT_KS, DEFAULT_SCALES, select_function_vector
from taskvec.stats import accuracy_entry
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.sampling import EvalSet
from taskvec.tasks.scoring import is_correct

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FvSettings:
    """How a task's function vector is found: corrupted prompts for the attribution, and the dev grid."""

    n_corrupted: int = 25
    ks: tuple[int, ...] = DEFAULT_KS
    scales: tuple[float, ...] = DEFAULT_SCALES
    refine_layers: int | None = 3  # coarse-to-fine dev search (None: the full layer x k x scale grid)
    attribution: str = "exact"  # head effects by patched forwards, or "gradient" (attribution patching)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ks"], d["scales"] = list(self.ks), list(self.scales)
        if self.attribution == "exact":  # recorded only when not the default: earlier runs' configs stay equal
            del d["attribution"]
        return d


@dataclass
class TaskFunctionVector:
    """A task's function vector, the attribution it came from, and the method that applies it."""

    fv: FunctionVector
    attribution: HeadAttribution
    method: FunctionVectorMethod
    dev_accuracy_by_layer: list[float]  # the best (k, scale) scored at each layer

    def to_dict(self) -> dict:
        return {**self.fv.to_dict(), "dev_accuracy_by_layer": self.dev_accuracy_by_layer,
                "attribution": self.attribution.to_dict()}  # fmt: skip


def icl_examples(sets: Sequence[EvalSet]) -> list[IclExample]:
    return [IclExample(tuple(s.demo_tuples), s.query.input, s.query.output) for s in sets]


def scorer(prepared: PreparedTask, sets: Sequence[EvalSet], scoring: str | None = None):
    """Accuracy of predictions for ``sets``' queries under the task's scoring rule (or ``scoring``)."""
    rule = scoring or prepared.task.scoring

    def score(predictions: Sequence[str]) -> float:
        ok = [is_correct(p, s.query, rule) for p, s in zip(predictions, sets)]
        return sum(ok) / max(1, len(ok))

    return score


def choose_function_vector(
    executor: Executor,
    prepared: PreparedTask,
    dev: Sequence[EvalSet],
    settings: FvSettings,
    rng: random.Random,
    scoring: str | None = None,
) -> TaskFunctionVector:
    """Attribution on the dev sets' ICL prompts, then the (layer, k, scale) with the best dev accuracy (the
    task's scoring rule, or ``scoring``: e.g. ``prefix`` for the first token of multi-token answers)."""
    lm, template = executor.lm, prepared.template
    clean = icl_examples(dev)
    with stage("fv_attribution"):
        clean, corrupted = attribution_examples(clean, settings.n_corrupted, rng)
        attribution = head_attribution(executor, clean, corrupted, template, attribution=settings.attribution)
    with stage("fv_selection"):
        fv = select_function_vector(executor, attribution, template, [s.query.input for s in dev],
                                    [s.query.output for s in dev], ks=settings.ks, scales=settings.scales,
                                    scorer=scorer(prepared, dev, scoring),
                                    refine_layers=settings.refine_layers)  # fmt: skip
    by_layer = [max(g["dev_accuracy"] for g in fv.selection["grid"] if g["layer"] == layer)
                for layer in range(lm.num_layers)]  # fmt: skip
    method = FunctionVectorMethod(fv.heads, attribution.mean_outputs.attention_rms, fv.scale)
    return TaskFunctionVector(fv, attribution, method, by_layer)


def method_entry(correct: Sequence[bool], icl_correct: Sequence[bool], icl_accuracy: float) -> dict:
    """Accuracy on all items and on the ICL-correct items, and the fraction of ICL recovered."""
    entry = accuracy_entry(correct)
    entry["icl_correct"] = accuracy_entry([c for c, i in zip(correct, icl_correct) if i])
    entry["recovered"] = entry["accuracy"] / icl_accuracy if icl_accuracy else None
    return entry


def compare_methods(
    executor: Executor,
    prepared: PreparedTask,
    test: Sequence[EvalSet],
    best_layer: int,
    thetas: torch.Tensor,
    outcomes: dict[str, list[bool]],
    task_fv: TaskFunctionVector | None,
    rng: random.Random,
    *,
    dev: Sequence[EvalSet] = (),
    every: Sequence[str] = (),
    every_settings: EverySettings | None = None,
) -> tuple[dict, dict, list[tuple[str, int | None, list[str], list[str], list[bool]]], dict, dict]:
    """The methods and controls on the test sets: ({method: entry}, {control: entry}, per-example batches,
    the every-position methods' chosen configurations, and their vectors averaged over the dev sets).

    ``thetas`` (len(test), H): each test set's task vector at ``best_layer``; ``outcomes``: correctness of
    "regular" (ICL) and "hypothesis" (task vector) per test item, already computed by the main protocol.
    A batch of rows is (method, layer, prompts, predictions, correct). ``every``: every-position methods
    (:mod:`taskvec.experiments.every_position`), chosen on ``dev``; their draws come after all the others, so
    that adding one changes no other method's numbers.
    """
    lm, template, scoring = executor.lm, prepared.template, prepared.task.scoring
    queries = [template.query_prompt(s.query.input) for s in test]
    shuffled_prompts = [template.icl_prompt(e.demonstrations, e.query)
                        for e in shuffled(icl_examples(test), rng)]  # fmt: skip
    icl_ok = outcomes["regular"]
    icl_accuracy = sum(icl_ok) / len(icl_ok)
    batches: list = []

    def scored(name: str, prompts: list[str], ids: torch.Tensor, layer: int | None) -> dict:
        predictions = decode_predictions(lm, ids)
        ok = [is_correct(p, s.query, scoring) for p, s in zip(predictions, test)]
        batches.append((name, layer, prompts, predictions, ok))
        return method_entry(ok, icl_ok, icl_accuracy)

    def run(name: str, prompts: list[str], edits, layer: int | None, short: bool) -> dict:
        return scored(name, prompts, executor.predict(prompts, edits, short=short).ids, layer)

    methods = {"task_vector": method_entry(outcomes["hypothesis"], icl_ok, icl_accuracy)}
    controls: dict[str, dict] = {}
    random_thetas = random_same_norm(thetas, rng.randrange(2**31))
    tv_edits = [TASK_VECTOR.edits(best_layer, v) for v in thetas]
    # Shuffled-label ICL alone and with each vector at its last token: the same prompts under several last-token
    # variants, so they run as one executor call (one pass over each prompt's demonstrations).
    shuffled_variants = {
        "shuffled_icl": (None, None),
        "shuffled_icl+task_vector": (PerPrompt(tuple(tv_edits)), best_layer),
    }
    if task_fv is not None:
        fv, method, layer = task_fv.fv, task_fv.method, task_fv.fv.layer
        fv_edits = method.edits(layer, fv.vector)
        noise = random_like(fv, seed=rng.randrange(2**31)).vector
        shuffled_variants["shuffled_icl+function_vector"] = (fv_edits, layer)
    with stage("controls"):
        ids = executor.last_token(shuffled_prompts, [v for v, _ in shuffled_variants.values()]).ids
        found = {name: (ids[i], layer) for i, (name, (_, layer)) in enumerate(shuffled_variants.items())}
        for name in ("shuffled_icl", "shuffled_icl+task_vector"):
            controls[name] = scored(name, shuffled_prompts, *found[name])
        controls["task_vector_random"] = run("task_vector_random", queries,
                                             [TASK_VECTOR.edits(best_layer, v) for v in random_thetas], best_layer,
                                             True)  # fmt: skip
    if task_fv is not None:
        with stage("test_fv"):
            methods["function_vector"] = run("function_vector", queries, [fv_edits] * len(test), layer, True)
        with stage("controls"):
            controls["function_vector_random"] = run("function_vector_random", queries,
                                                     [method.edits(layer, noise)] * len(test), layer, True)  # fmt: skip
            name = "shuffled_icl+function_vector"
            controls[name] = scored(name, shuffled_prompts, *found[name])
    chosen, means = {}, {}
    if every:
        found, more, chosen, means = evaluate_every_position(executor, prepared, dev, test, every,
                                                             every_settings or EverySettings(), rng,
                                                             shuffled_prompts, scorer(prepared, dev), run)  # fmt: skip
        methods.update(found)
        controls.update(more)
    return methods, controls, batches, chosen, means
