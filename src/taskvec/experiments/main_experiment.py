"""The paper's main experiment for one task: dev layer sweep, then Regular / Hypothesis / Baseline on test."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import torch

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor, Made
from taskvec.core.layers import best_layer
from taskvec.core.methods import EVERY_POSITION, TASK_VECTOR, FunctionVectorMethod, TaskVectorMethod
from taskvec.engine.accounting import stage
from taskvec.engine.close_calls import DEFAULT_RECHECK_MARGIN
from taskvec.experiments.every_position import EverySettings
from taskvec.experiments.method_comparison import FvSettings, choose_function_vector, compare_methods
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import MIXED
from taskvec.models.registry import DEFAULT_MODEL
from taskvec.prompts import PromptTemplate
from taskvec.runtime import make_executor
from taskvec.stats import accuracy_entry
from taskvec.tasks.definitions import Pair
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.protocol import protocol_record
from taskvec.tasks.registry import PAPER_TASKS
from taskvec.tasks.sampling import EvalSet, draw_splits
from taskvec.tasks.scoring import is_correct


@dataclass(frozen=True)
class MainConfig:
    """The protocol of a run; the defaults are the paper's."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = PAPER_TASKS
    task_files: tuple[str, ...] = ()
    shots: int = 5
    n_dev: int = 50
    n_test: int = 50
    n_baseline: int = 100
    n_dummy: int = 2
    seed: int = 41
    dtype: str = "float32"
    batch_size: int | str = 32  # ICL prompts per forward, or "auto" (the runner halves it on out-of-memory errors)
    recheck_margin: float = DEFAULT_RECHECK_MARGIN  # dtype "mixed" only: test close calls redone in float32
    extra: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=protocol_record)  # prompt/scoring choices (tasks.protocol)
    methods: tuple[str, ...] = (TaskVectorMethod.name,)  # more than the task vector: methods compared, controls
    fv: dict = field(default_factory=dict)  # FvSettings fields that differ from their defaults
    every: dict = field(default_factory=dict)  # EverySettings fields (every-position methods) that differ

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"], d["task_files"] = list(self.tasks), list(self.task_files)
        if self.dtype != MIXED:
            del d["recheck_margin"]  # meaningless without mixed precision
        if not self.compares:  # the paper's run: its configuration is what it was before methods existed
            del d["methods"], d["fv"]
        else:
            d["methods"], d["fv"] = list(self.methods), self.fv_settings.to_dict()
        if self.every_position:
            d["every"] = self.every_settings.to_dict()
        else:  # as before every-position methods existed (a tv,fv run resumes its old directory)
            del d["every"]
        return d

    @property
    def every_position(self) -> tuple[str, ...]:
        """The every-position methods compared (In-Context Vectors, mean difference, ICL shift)."""
        return tuple(m for m in self.methods if m in EVERY_POSITION)

    @property
    def every_settings(self) -> EverySettings:
        return EverySettings(**self.every)

    @property
    def compares(self) -> bool:
        """Whether methods are compared (with the controls), beyond the paper's task vector alone."""
        return tuple(self.methods) != (TaskVectorMethod.name,)

    @property
    def fv_settings(self) -> FvSettings:
        return FvSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.fv.items()})


def task_rng(seed: int, task_name: str) -> random.Random:
    """One generator per task, so a task's samples do not depend on which tasks ran before it."""
    return random.Random(f"{seed}:{task_name}")


def task_splits(
    prepared: PreparedTask, config: MainConfig
) -> tuple[random.Random, tuple[list[EvalSet], list[EvalSet], list[Pair]]]:
    """The task's generator and the dev sets, test sets and baseline queries drawn from it first: the same draw
    wherever it is made again (the task-agnostic control re-draws the test sets this way)."""
    rng = task_rng(config.seed, prepared.name)
    splits = draw_splits(prepared.pairs, config.shots, config.n_dev, config.n_test, config.n_baseline, config.n_dummy,
                         rng)  # fmt: skip
    return rng, splits


def example_rows(
    task: str, split: str, method: str, layer, prompts, sets_or_pairs, predictions, correct, rechecked=None
) -> list[dict]:
    """Per-example rows; ``rechecked`` (mixed precision) marks close calls recomputed in float32."""
    rows = []
    for i, (prompt, item, pred, ok) in enumerate(zip(prompts, sets_or_pairs, predictions, correct)):
        pair = item.query if isinstance(item, EvalSet) else item
        rows.append({"task": task, "split": split, "method": method, "set": i, "layer": layer, "prompt": prompt,
                     "query": pair.input, "gold": pair.output, "prediction": pred, "correct": ok})  # fmt: skip
        if rechecked is not None:
            rows[-1]["rechecked"] = bool(rechecked[i])
    return rows


def set_vectors(executor: Executor, template: PromptTemplate, sets: list[EvalSet], layers: list[int]) -> torch.Tensor:
    """theta of each set (its demonstrations, averaged over its dummy queries) at ``layers``: (sets, layers, H)."""
    return TASK_VECTOR.vectors(executor, template, sets, layers)


def dev_sweep(
    executor: Executor, prepared: PreparedTask, dev: list[EvalSet]
) -> tuple[list[float], list[list[str]], list[list[bool]], torch.Tensor]:
    """Each dev set's theta patched into its bare query at every layer: accuracy, predictions and
    correctness per layer, and theta averaged over the dev sets (layers, H). Work goes to the stages
    dev_theta and dev_sweep."""
    lm, template = executor.lm, prepared.template
    prompts = [template.query_prompt(s.query.input) for s in dev]
    layers = list(range(lm.num_layers))
    with stage("dev_theta"):
        vectors = set_vectors(executor, template, dev, layers)
    with stage("dev_sweep"):
        ids = executor.sweep(prompts, vectors, layers, TASK_VECTOR)
    accuracy, predictions, correct = [], [], []
    for layer_ids in ids:
        preds = decode_predictions(lm, layer_ids)
        ok = [is_correct(p, s.query, prepared.task.scoring) for p, s in zip(preds, dev)]
        accuracy.append(sum(ok) / len(ok))
        predictions.append(preds)
        correct.append(ok)
    return accuracy, predictions, correct, vectors.mean(0)


def main_executor(lm: LoadedModel, config: MainConfig, kind: str = "fast") -> Executor:
    """The executor a run uses: ``kind`` with the config's batch size and recheck margin."""
    return make_executor(lm, kind, int(config.batch_size), recheck_margin=config.recheck_margin)


def evaluate_task(
    lm: LoadedModel,
    prepared: PreparedTask,
    config: MainConfig,
    *,
    executor: Executor | None = None,
    vectors_out: dict[str, torch.Tensor] | None = None,
) -> tuple[dict, list[dict]]:
    """Run one task through the protocol; returns its results entry and its per-example rows.

    With methods compared (``config.methods`` beyond the task vector), the function vector and the controls
    of :mod:`taskvec.experiments.method_comparison` are added. ``vectors_out``, when given, receives the task's
    vectors for the task-agnostic control: theta averaged over the dev sets at every layer
    (``theta_dev_mean``) and the function vector (``function_vector``).

    ``executor`` runs the model (default: the fast one, :func:`main_executor`); every executor gives the
    same float32 predictions. Work is attributed to the stages dev_theta, dev_sweep, test_theta_icl,
    test_tv and baseline (and recheck, for executors that recompute close calls).
    """
    started = time.perf_counter()
    executor = executor or main_executor(lm, config)
    task, template, name = prepared.task, prepared.template, prepared.name
    rng, (dev, test, baseline_pairs) = task_splits(prepared, config)

    def score(predictions: list[str], pairs: list[Pair]) -> list[bool]:
        return [is_correct(p, pair, task.scoring) for p, pair in zip(predictions, pairs)]

    rows: list[dict] = []
    # Dev: sweep every layer; the best layer is the first with the top dev accuracy.
    dev_prompts = [template.query_prompt(s.query.input) for s in dev]
    dev_accuracy, dev_preds, dev_ok, theta_dev_mean = dev_sweep(executor, prepared, dev)
    for layer, (preds, ok) in enumerate(zip(dev_preds, dev_ok)):
        rows += example_rows(name, "dev", "dev_sweep", layer, dev_prompts, dev, preds, ok)
    best = best_layer(dev_accuracy)

    # Test: the task vector at the best layer, regular ICL (the same demonstrations), and the zero-shot baseline.
    test_pairs = [s.query for s in test]
    test_prompts = [template.query_prompt(p.input) for p in test_pairs]
    icl_prompts = [template.icl_prompt(s.demo_tuples, s.query.input) for s in test]
    with stage("test_theta_icl"):
        thetas, icl = TASK_VECTOR.vectors_and_predictions(executor, template, test, [best], icl_prompts)
    tv_thetas = thetas[:, 0, :]
    edits = [TASK_VECTOR.edits(best, v) for v in tv_thetas]
    with stage("test_tv"):
        tv = executor.predict(test_prompts, edits, short=True, made=Made(TASK_VECTOR, template, test))
    bl_prompts = [template.query_prompt(p.input) for p in baseline_pairs]
    with stage("baseline"):
        bl = executor.predict(bl_prompts, short=True)
    found = {"hypothesis": tv, "regular": icl, "baseline": bl}
    tv_preds, icl_preds, bl_preds = (decode_predictions(lm, p.ids) for p in found.values())

    def again(method: str):
        rechecked = found[method].rechecked
        return None if rechecked is None else rechecked.mask.reshape(-1)

    tv_ok, icl_ok, bl_ok = score(tv_preds, test_pairs), score(icl_preds, test_pairs), score(bl_preds, baseline_pairs)
    rows += example_rows(name, "test", "hypothesis", best, test_prompts, test, tv_preds, tv_ok, again("hypothesis"))
    rows += example_rows(name, "test", "regular", None, icl_prompts, test, icl_preds, icl_ok, again("regular"))
    rows += example_rows(name, "test", "baseline", None, bl_prompts, baseline_pairs, bl_preds, bl_ok, again("baseline"))
    result = {
        "category": task.category,
        "description": task.description,
        "source": task.source,
        "n_pairs": len(task.pairs),
        "n_usable": prepared.n_usable,
        "answer_prefix": template.answer_prefix,
        "input_prefix": template.input_prefix,
        "regular": accuracy_entry(icl_ok),
        "hypothesis": accuracy_entry(tv_ok),
        "baseline": accuracy_entry(bl_ok),
        "best_layer": best,
        "best_layer_fraction": best / lm.num_layers,
        "dev_accuracy_by_layer": dev_accuracy,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if vectors_out is not None:
        vectors_out["theta_dev_mean"] = theta_dev_mean
    if config.compares:
        task_fv = None
        if FunctionVectorMethod.name in config.methods:
            task_fv = choose_function_vector(executor, prepared, dev, config.fv_settings, rng)
            result["function_vector"] = task_fv.to_dict()
            if vectors_out is not None:
                vectors_out["function_vector"] = task_fv.fv.vector
        outcomes = {"regular": icl_ok, "hypothesis": tv_ok}
        methods, controls, batches, chosen, means = compare_methods(
            executor, prepared, test, best, tv_thetas, outcomes, task_fv, rng, dev=dev, every=config.every_position,
            every_settings=config.every_settings,
        )  # fmt: skip
        result["methods"], result["controls"] = methods, controls
        if chosen:
            result["every_position"] = chosen
        if vectors_out is not None:
            vectors_out.update(means)
        for method, layer, prompts, predictions, ok in batches:
            rows += example_rows(name, "test", method, layer, prompts, test, predictions, ok)
        result["seconds"] = round(time.perf_counter() - started, 2)
    rechecked = {method: p.rechecked.summary() for method, p in found.items() if p.rechecked is not None}
    if rechecked:
        result["close_calls"] = {"margin": config.recheck_margin, **rechecked}
    return result, rows
