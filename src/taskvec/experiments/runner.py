"""``taskvec run``: the main experiment over many tasks, resumable, writing results and a report."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from taskvec.core.interfaces import Executor
from taskvec.engine.accounting import Accounting, accounting, stage
from taskvec.experiments.backoff import BatchBackoff
from taskvec.experiments.harness import (
    Progress,
    RunDirectory,
    peak_rss_mb,
    results_header,
    run_directory,
    versions,
)
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.experiments.outdir import task_result_path
from taskvec.experiments.task_agnostic import add_task_agnostic, save_task_vectors, vectors_path
from taskvec.models.loading import LoadedModel, load_model
from taskvec.report import write_report
from taskvec.report.methods import mean_aie, top_heads
from taskvec.runtime import make_executor
from taskvec.stats import summarize
from taskvec.tasks.preparation import PreparedTask, prepare_task
from taskvec.tasks.protocol import PromptProtocol
from taskvec.tasks.registry import load_tasks
from taskvec.tasks.validation import PoolSizes, check_pools, prepared_pools, task_pools

logger = logging.getLogger(__name__)


def run_main(
    config: MainConfig,
    out_dir: str | Path,
    lm: LoadedModel | None = None,
    progress: Progress | None = None,
    *,
    wait: bool = False,
    device: str = "cpu",
    executor: str = "fast",
) -> dict:
    """Run (or resume) the main experiment into ``out_dir``; returns the results dictionary.

    The directory is locked for the whole run: a second run into it is refused (or, with ``wait``,
    waits). A run killed at any moment resumes from its finished tasks when started again.
    ``device`` is where a model loaded here goes (``auto``: accelerate device map); results do not depend
    on it. ``executor``: ``fast`` (the default) or ``plain`` (every prompt whole: the reference the benchmark
    checks against; see :mod:`taskvec.runtime`).
    """
    started = time.perf_counter()
    tasks = load_tasks(config.tasks, config.task_files)
    sizes = PoolSizes(config.shots, config.n_dev, config.n_test, config.n_dummy)
    check_pools(task_pools(tasks), sizes)  # every task, before the model loads (the same rule after preparation)
    with run_directory(out_dir, config.to_dict(), wait=wait) as run, accounting() as work:
        out = run.out
        prompt = PromptProtocol.from_record(config.protocol)
        with stage("load"):
            lm = prompt.applied(lm or load_model(config.model, dtype=config.dtype, device=device))
        with stage("prepare"):
            prepared = [prepare_task(lm, t, prompt=prompt) for t in tasks]
        check_pools(prepared_pools(prepared), sizes)
        run.started()
        runs = make_executor(lm, executor, recheck_margin=config.recheck_margin)  # batch size: per task, below
        task_results = _evaluate_all(runs, prepared, config, run, progress)
        if config.compares and len(prepared) > 1:
            with stage("task_agnostic"):
                add_task_agnostic(runs, prepared, config, out, task_results)
        results = _results(lm, config, task_results, started, work)
        run.finish(results, (r for t in task_results.values() for r in t["predictions"]), write_report)
    return results


def _evaluate_all(
    executor: Executor, prepared: list[PreparedTask], config: MainConfig, run: RunDirectory, progress: Progress | None
) -> dict[str, dict]:
    """{task name: {"result", "predictions"}}, each task computed or read back from a finished earlier run."""
    lm = executor.lm
    backoff = BatchBackoff(config.batch_size)

    def compute(i: int) -> dict:
        p = prepared[i]
        vectors: dict = {}
        result, rows = backoff.run(
            lambda size: evaluate_task(
                lm,
                p,
                replace(config, batch_size=size),
                executor=executor.with_batch_size(size),
                vectors_out=vectors,
            ),
            p.name,
            lm,
        )
        if config.compares:  # before the task's results: a finished task always has its vectors
            save_task_vectors(vectors_path(task_result_path(run.out, p.name)), vectors, p.name)
        logger.info("task %s: ICL %.2f, TV %.2f (layer %d), baseline %.2f", p.name,
                    result["regular"]["accuracy"], result["hypothesis"]["accuracy"], result["best_layer"],
                    result["baseline"]["accuracy"])  # fmt: skip
        return {"result": result, "predictions": rows}

    return run.each_task([p.name for p in prepared], compute, progress)


def _results(
    lm: LoadedModel, config: MainConfig, saved_by_task: dict[str, dict], started: float, work: Accounting
) -> dict:
    task_results = {name: saved["result"] for name, saved in saved_by_task.items()}
    results = {
        "taskvec_version": versions()["taskvec"],
        **results_header(None, config.to_dict(), lm, config.seed),
        "tasks": task_results,
        "summary": summarize(task_results),
        "timing": {  # of this process: tasks resumed from an earlier one are not counted
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "stages": {name: _rounded(asdict(w)) for name, w in work.stages.items()},
        },
    }
    aie = mean_aie(results)
    if aie is not None:
        results["head_attribution"] = {
            "mean_aie": [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in aie],
            "top_heads": [{"layer": li, "head": j, "mean_aie": v} for li, j, v in top_heads(aie, 10)],
        }
    return results


def _rounded(work: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in work.items()}
