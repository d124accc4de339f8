"""``taskvec heads``: head attribution of every task (the AIE table of Todd et al.), resumable.

Per task: ``n_prompts`` clean ICL prompts (``shots`` demonstrations and a query, drawn with one generator per
task) give every head's mean last-token output; the same prompts with their demonstrations' labels shuffled
(:func:`taskvec.heads.examples.attribution_examples`, the recipe of ``run`` and ``extract`` too) are scored with
each head's mean output patched in (:func:`taskvec.heads.attribution.head_attribution`). Each
task's table is written to ``tasks/<task>.json`` when it is done (a killed run resumes); ``results.json``
holds every table, their mean over tasks and the top heads; ``report.md``/``report.html`` show the heatmaps.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from taskvec.core.interfaces import Executor
from taskvec.experiments.harness import Progress, results_header, run_directory
from taskvec.experiments.main_experiment import task_rng
from taskvec.heads.attribution import head_attribution
from taskvec.heads.examples import CORRUPTED_RECIPE, attribution_examples, sample_icl_examples
from taskvec.models.loading import LoadedModel, load_model
from taskvec.report.heads_report import write_heads_report
from taskvec.report.methods import top_heads
from taskvec.runtime import make_executor
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.protocol import PromptProtocol
from taskvec.tasks.registry import load_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadsConfig:
    model: str
    tasks: tuple[str, ...]
    task_files: tuple[str, ...] = ()
    shots: int = 5
    n_prompts: int = 25
    seed: int = 41
    dtype: str = "float32"
    attribution: str = "exact"  # or "gradient" (attribution patching)
    corrupted: str = CORRUPTED_RECIPE  # always recorded: a directory of the earlier recipe is not resumed
    prompt: PromptProtocol = field(default_factory=PromptProtocol)  # choices beyond the paper's (e.g. the FV code's)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"], d["task_files"], d["command"] = list(self.tasks), list(self.task_files), "heads"
        if self.attribution == "exact":  # recorded only when not the default: earlier runs' configs stay equal
            del d["attribution"]
        d["prompt"] = {k: v for k, v in d["prompt"].items() if v != getattr(PromptProtocol(), k)}
        if not d["prompt"]:
            del d["prompt"]
        return d


def run_heads(
    config: HeadsConfig,
    out_dir: str | Path,
    lm: LoadedModel | None = None,
    progress: Progress | None = None,
) -> dict:
    """Head attribution of every task of ``config`` into ``out_dir``; returns the results dictionary."""
    started = time.perf_counter()
    tasks = load_tasks(config.tasks, config.task_files)
    with run_directory(out_dir, config.to_dict()) as run:
        lm = config.prompt.applied(lm or load_model(config.model, dtype=config.dtype))
        executor = make_executor(lm, "fast")
        run.started()
        saved = run.each_task(
            [t.name for t in tasks],
            lambda i: {"result": attribute_task(executor, tasks[i], config), "predictions": []}, progress,
        )  # fmt: skip
        per_task = {name: s["result"] for name, s in saved.items()}
        results = heads_results(lm, config, per_task, time.perf_counter() - started)
        run.finish(results, None, write_heads_report)
    return results


def task_examples(lm: LoadedModel, task, config: HeadsConfig):
    """The task prepared, and its clean and shuffled-label examples (seeded from the seed and the task's name)."""
    prepared = prepare_task(lm, task, prompt=config.prompt)
    pairs = [(p.input, p.output) for p in prepared.pairs]
    rng = task_rng(config.seed, task.name)
    shots = min(config.shots, len(pairs) - 1)
    clean = sample_icl_examples(pairs, config.n_prompts, shots, seed=rng.randrange(2**31))
    clean, corrupted = attribution_examples(clean, config.n_prompts, rng)
    return prepared, clean, corrupted


def attribute_task(executor: Executor, task, config: HeadsConfig) -> dict:
    """One task's AIE table and how it was measured."""
    started = time.perf_counter()
    prepared, clean, corrupted = task_examples(executor.lm, task, config)
    attribution = head_attribution(executor, clean, corrupted, prepared.template, attribution=config.attribution)
    table = np.array([[math.nan if v is None else v for v in row] for row in attribution.to_dict()["aie"]])
    return {
        "category": task.category,
        **attribution.to_dict(),
        "top_heads": [{"layer": li, "head": j, "aie": v} for li, j, v in top_heads(table, 10)],
        "seconds": round(time.perf_counter() - started, 2),
    }


def heads_results(lm: LoadedModel, config: HeadsConfig, per_task: dict[str, dict], seconds: float) -> dict:
    tables = [np.array([[math.nan if v is None else v for v in row] for row in t["aie"]]) for t in per_task.values()]
    mean = np.nanmean(np.stack(tables), axis=0)
    return {
        **results_header("heads", config.to_dict(), lm, config.seed),
        "tasks": per_task,
        "mean_aie": _rows(mean),
        "top_heads": [{"layer": li, "head": j, "mean_aie": v} for li, j, v in top_heads(mean, 10)],
        "timing": {
            "seconds": round(seconds, 1),
            "seconds_per_task": {name: t["seconds"] for name, t in per_task.items()},
        },
    }


def _rows(table: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in table]
