"""The task-agnostic control: each method's vector averaged over the *other* tasks of the run, applied the
way the task's own vector is (same layer, same operation, same scale).

It tells how much of a method's effect is task content and how much a direction shared by all tasks.
Every task saves its vectors next to its results (``tasks/<task>.vectors.safetensors``: the task vector
averaged over the dev sets at every layer, and the function vector), so that a resumed run has them; the
control is computed when the run's results are assembled, over the tasks of the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.methods import TASK_VECTOR, method_for
from taskvec.errors import TaskvecError
from taskvec.experiments.every_position import configured, row_edits_of
from taskvec.experiments.main_experiment import MainConfig, example_rows, task_splits
from taskvec.experiments.method_comparison import method_entry
from taskvec.experiments.outdir import task_result_path
from taskvec.io.vector_files import read_tensors, write_tensors
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.sampling import EvalSet
from taskvec.tasks.scoring import is_correct

VECTORS_KEY = "taskvec_task_vectors"


def vectors_path(result_path: Path) -> Path:
    """``tasks/<task>.vectors.safetensors`` beside a task's ``tasks/<task>.json``."""
    return result_path.with_suffix(".vectors.safetensors")


def save_task_vectors(path: Path, tensors: dict[str, torch.Tensor], task: str) -> None:
    write_tensors(path, {k: v.contiguous().float() for k, v in tensors.items()},
                  {VECTORS_KEY: json.dumps({"task": task, "keys": sorted(tensors)})})  # fmt: skip


def load_task_vectors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_tensors(path)[0]
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise TaskvecError(f"{str(path)!r} is not a taskvec task-vectors file: {exc}") from exc


def others_mean(vectors: dict[str, dict[str, torch.Tensor]], key: str, task: str) -> torch.Tensor:
    rows = [v[key] for name, v in vectors.items() if name != task and key in v]
    if not rows:
        raise TaskvecError(f"no other task has a {key!r} vector; the task-agnostic control needs two tasks or more")
    return torch.stack(rows).mean(0)


def task_agnostic(
    executor: Executor,
    prepared: PreparedTask,
    test: Sequence[EvalSet],
    result: dict,
    vectors: dict[str, dict[str, torch.Tensor]],
) -> tuple[dict[str, list[bool]], list[tuple[str, int, list[str], list[str], list[bool]]]]:
    """Correctness per test item of each method's task-agnostic vector for this task, and the row batches
    (method, layer, prompts, predictions, correct)."""
    lm, template, name = executor.lm, prepared.template, prepared.name
    prompts = [template.query_prompt(s.query.input) for s in test]
    plans = []
    layer = int(result["best_layer"])
    theta = others_mean(vectors, "theta_dev_mean", name)[layer]
    plans.append(("task_vector_task_agnostic", layer, TASK_VECTOR.edits(layer, theta)))
    fv = result.get("function_vector")
    if fv is not None:
        fv_layer = int(fv["layer"])
        mean = others_mean(vectors, "function_vector", name)
        method = method_for("function_vector", {"applied_scale": float(fv["scale"])})
        plans.append(("function_vector_task_agnostic", fv_layer, method.edits(fv_layer, mean)))
    for method, chosen in (result.get("every_position") or {}).items():
        mean = others_mean(vectors, method, name)
        edits = row_edits_of(configured(method, float(chosen["strength"])), mean[None], chosen["layer"])[0]
        plans.append((f"{method}_task_agnostic", chosen["layer"], edits))
    outcomes, batches = {}, []
    for method, at, edit in plans:
        predictions = decode_predictions(lm, executor.predict(prompts, [edit] * len(prompts), short=True).ids)
        ok = [is_correct(p, s.query, prepared.task.scoring) for p, s in zip(predictions, test)]
        outcomes[method] = ok
        batches.append((method, at, prompts, predictions, ok))
    return outcomes, batches


def test_sets(prepared: PreparedTask, config: MainConfig) -> list[EvalSet]:
    """The task's test sets, drawn again exactly as its evaluation drew them (one generator per task)."""
    return task_splits(prepared, config)[1][1]


def add_task_agnostic(
    executor: Executor, prepared: Sequence[PreparedTask], config: MainConfig, out: Path, saved: dict[str, dict]
) -> None:
    """Add each task's task-agnostic controls to its result (``controls``) and rows (``predictions``) in
    ``saved`` ({task: {"result", "predictions"}}), from the vectors the tasks saved in ``out``."""
    vectors = {p.name: load_task_vectors(vectors_path(task_result_path(out, p.name))) for p in prepared}
    for p in prepared:
        result, rows = saved[p.name]["result"], saved[p.name]["predictions"]
        test = test_sets(p, config)
        icl_ok = [r["correct"] for r in rows if r["split"] == "test" and r["method"] == "regular"]
        if len(icl_ok) != len(test):
            raise TaskvecError(f"task {p.name}: {len(icl_ok)} saved ICL rows for {len(test)} test sets; expected "
                               "one each (a results file from another configuration?)")  # fmt: skip
        outcomes, batches = task_agnostic(executor, p, test, result, vectors)
        icl_accuracy = sum(icl_ok) / len(icl_ok)
        controls = result.setdefault("controls", {})
        for method, ok in outcomes.items():
            controls[method] = method_entry(ok, icl_ok, icl_accuracy)
        kept = [r for r in rows if not r["method"].endswith("_task_agnostic")]
        for method, layer, prompts, predictions, ok in batches:
            kept += example_rows(p.name, "test", method, layer, prompts, test, predictions, ok)
        saved[p.name]["predictions"] = kept
