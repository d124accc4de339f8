"""``taskvec multitoken``: the multi-token evaluation over tasks, resumable, with results.json, per-example
predictions.jsonl and a report (every variant's exact match and token F1, per answer length; the task vector
in other query templates). See :mod:`taskvec.experiments.multitoken` for what is measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from taskvec.experiments.locking import output_dir_lock
from taskvec.experiments.multitoken import MultiTokenConfig, evaluate_multitoken
from taskvec.experiments.outdir import each_task, open_run_dir, write_run_config
from taskvec.experiments.runner import model_info, versions
from taskvec.io.atomic import write_json_atomic, write_jsonl_atomic
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
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    started = time.perf_counter()
    wanted = {"command": "multitoken", "model": model, "dtype": dtype, "tasks": [t.name for t in tasks],
              **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()
                 if k != "every" or v}}  # fmt: skip (no every-position method: the configuration of before)
    with output_dir_lock(out_dir) as out:
        resuming = open_run_dir(out, wanted)
        lm = lm or load_model(model, dtype=dtype)
        if not resuming:
            write_run_config(out, wanted)
        executor = make_executor(lm, "fast", config.batch_size)

        def compute(i: int) -> dict:
            result = evaluate_multitoken(lm, tasks[i], config, executor=executor)
            rows = [{"task": tasks[i].name, "group": g, **e} for g, entry in result["groups"].items()
                    for e in entry["examples"]]  # fmt: skip
            return {"result": result, "predictions": rows}

        per_task = each_task(out, [t.name for t in tasks], compute, progress)
        results = {
            "command": "multitoken",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": config.seed,
            "config": wanted,
            "model": model_info(lm),
            "versions": versions(),
            "tasks": {name: _without_examples(s["result"]) for name, s in per_task.items()},
            "timing": {"seconds": round(time.perf_counter() - started, 1)},
        }
        results["summary"] = summarize_multitoken(results["tasks"])
        write_jsonl_atomic(out / "predictions.jsonl", (r for s in per_task.values() for r in s["predictions"]))
        write_json_atomic(out / "results.json", results)
        write_multitoken_report(out, results)
    return results


def _without_examples(result: dict) -> dict:
    groups = {g: {k: v for k, v in entry.items() if k != "examples"} for g, entry in result["groups"].items()}
    return {**result, "groups": groups}
