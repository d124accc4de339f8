"""``taskvec multitoken``: the multi-token evaluation over tasks, resumable, with results.json, per-example
predictions.jsonl and a report (every variant's exact match and token F1, per answer length; the task vector
in other query templates). See :mod:`taskvec.experiments.multitoken` for what is measured."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from taskvec.experiments.harness import Progress, results_header, run_directory
from taskvec.experiments.multitoken import MultiTokenConfig, evaluate_multitoken
from taskvec.models.loading import LoadedModel, load_model
from taskvec.report.multitoken_report import summarize_multitoken, write_multitoken_report
from taskvec.runtime import make_executor
from taskvec.tasks.definitions import Task


def run_multitoken(
    model: str,
    tasks: list[Task],
    config: MultiTokenConfig,
    out_dir: str | Path,
    *,
    lm: LoadedModel | None = None,
    dtype: str = "float32",
    progress: Progress | None = None,
) -> dict:
    started = time.perf_counter()
    wanted = {
        "command": "multitoken",
        "model": model,
        "dtype": dtype,
        "tasks": [t.name for t in tasks],
        **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items() if k != "every" or v},
    }  # fmt: skip (no every-position method: the configuration of before)
    with run_directory(out_dir, wanted) as run:
        lm = lm or load_model(model, dtype=dtype)
        run.started()
        executor = make_executor(lm, "fast", config.batch_size)

        def compute(i: int) -> dict:
            result = evaluate_multitoken(lm, tasks[i], config, executor=executor)
            rows = [{"task": tasks[i].name, "group": g, **e} for g, entry in result["groups"].items()
                    for e in entry["examples"]]  # fmt: skip
            return {"result": result, "predictions": rows}

        per_task = run.each_task([t.name for t in tasks], compute, progress)
        results = {
            **results_header("multitoken", wanted, lm, config.seed),
            "tasks": {name: _without_examples(s["result"]) for name, s in per_task.items()},
            "timing": {"seconds": round(time.perf_counter() - started, 1)},
        }
        results["summary"] = summarize_multitoken(results["tasks"])
        run.finish(results, (r for s in per_task.values() for r in s["predictions"]), write_multitoken_report)
    return results


def _without_examples(result: dict) -> dict:
    groups = {g: {k: v for k, v in entry.items() if k != "examples"} for g, entry in result["groups"].items()}
    return {**result, "groups": groups}
