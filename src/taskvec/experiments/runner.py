"""``taskvec run``: the main experiment over many tasks, resumable, writing results and a report."""

from __future__ import annotations

import json
import logging
import platform
import resource
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from taskvec.errors import OutputDirectoryError, TaskDataError
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.models.loading import LoadedModel, load_model
from taskvec.report import write_report
from taskvec.report.results_io import write_json_atomic, write_jsonl_atomic
from taskvec.stats import summarize
from taskvec.tasks.preparation import PreparedTask, prepare_task
from taskvec.tasks.registry import load_tasks
from taskvec.tasks.sampling import minimum_pairs

logger = logging.getLogger(__name__)

RUN_CONFIG = "run-config.json"
Progress = Callable[[str, int, int], None]  # (task name, tasks finished, tasks in all)


def prepare_output_dir(out_dir: Path, config: MainConfig) -> None:
    """Create ``out_dir`` or accept it when it holds a run of exactly this configuration."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".taskvec-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror or exc}") from exc
    saved_path = out_dir / RUN_CONFIG
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        wanted = config.to_dict()
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if diff:
            details = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
            raise OutputDirectoryError(
                f"output directory {str(out_dir)!r} holds a run with another configuration ({details}); "
                "use a new --out directory (runs are never mixed)"
            )
    elif any(out_dir.iterdir()):
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not empty and holds no taskvec run")
    else:
        write_json_atomic(saved_path, config.to_dict())


def check_sizes(prepared: list[PreparedTask], config: MainConfig) -> None:
    """Refuse tasks that cannot fill one prompt (and task files short of the whole run); warn otherwise."""
    floor = minimum_pairs(config.shots, config.n_dummy)
    wanted = config.shots + config.n_dev + config.n_test
    for p in prepared:
        if p.n_usable < floor or (p.task.source != "builtin" and p.n_usable < wanted):
            need = floor if p.n_usable < floor else wanted
            raise TaskDataError(
                f"task {p.name!r} has {p.n_usable} usable pairs (of {len(p.task.pairs)}; answers must be one token "
                f"for this model) but needs {need} for shots={config.shots}, n_dev={config.n_dev}, "
                f"n_test={config.n_test}"
            )
        if p.n_usable < wanted:
            logger.warning("task %s: %d usable pairs, fewer than the %d the run needs: queries repeat across sets",
                           p.name, p.n_usable, wanted)  # fmt: skip


def versions() -> dict[str, str]:
    import torch
    import transformers

    from taskvec import __version__

    return {"taskvec": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def model_info(lm: LoadedModel) -> dict:
    """The model's id, class, type, depth and source (bundled name and sha256, or path)."""
    return {"id": lm.model_id, "class": type(lm.model).__name__,
            "model_type": getattr(lm.model.config, "model_type", None), "num_layers": lm.num_layers,
            "source": lm.source}  # fmt: skip


def peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_main(
    config: MainConfig, out_dir: str | Path, lm: LoadedModel | None = None, progress: Progress | None = None
) -> dict:
    """Run (or resume) the main experiment into ``out_dir``; returns the results dictionary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    tasks = load_tasks(config.tasks, config.task_files)
    prepare_output_dir(out_dir, config)
    lm = lm or load_model(config.model, dtype=config.dtype)
    prepared = [prepare_task(lm, t) for t in tasks]
    check_sizes(prepared, config)
    task_results: dict[str, dict] = {}
    all_rows: list[dict] = []
    for i, p in enumerate(prepared):
        if progress:
            progress(p.name, i, len(prepared))
        done_file = out_dir / "tasks" / f"{p.name}.json"
        if done_file.exists():
            saved = json.loads(done_file.read_text())
            logger.info("task %s: already done, resuming from %s", p.name, done_file)
        else:
            result, rows = evaluate_task(lm, p, config)
            saved = {"result": result, "predictions": rows}
            write_json_atomic(done_file, saved)
            logger.info("task %s: ICL %.2f, TV %.2f (layer %d), baseline %.2f", p.name,
                        result["regular"]["accuracy"], result["hypothesis"]["accuracy"], result["best_layer"],
                        result["baseline"]["accuracy"])  # fmt: skip
        task_results[p.name] = saved["result"]
        all_rows.extend(saved["predictions"])
    if progress:
        progress("", len(prepared), len(prepared))
    results = {
        "taskvec_version": versions()["taskvec"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": config.seed,
        "config": config.to_dict(),
        "model": model_info(lm),
        "versions": versions(),
        "tasks": task_results,
        "summary": summarize(task_results),
        "timing": {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb(), 1)},
    }
    write_jsonl_atomic(out_dir / "predictions.jsonl", all_rows)
    write_json_atomic(out_dir / "results.json", results)
    write_report(out_dir, results)
    return results
