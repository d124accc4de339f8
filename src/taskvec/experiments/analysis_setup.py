"""What the analyses (robustness, conflict, interpret) share: tasks, the layer per task, run metadata."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from taskvec.core.interfaces import Executor
from taskvec.core.layers import best_layer
from taskvec.engine.forward import check_layers
from taskvec.errors import OutputDirectoryError, TaskDataError, TaskvecError
from taskvec.experiments.harness import model_info, peak_rss_mb, versions
from taskvec.experiments.main_experiment import dev_sweep, task_rng
from taskvec.models.loading import LoadedModel
from taskvec.models.registry import DEFAULT_MODEL
from taskvec.runtime import make_executor
from taskvec.tasks.preparation import PreparedTask, prepare_task
from taskvec.tasks.registry import builtin_task
from taskvec.tasks.sampling import draw_splits, minimum_pairs

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]  # called with a short description of the step that starts


@dataclass(frozen=True)
class LayerOptions:
    """How each task's layer is chosen: a fixed ``layer``, the best layers of a ``taskvec run``
    (``from_run``), or else a quick dev sweep of ``n_dev`` sets per task."""

    layer: int | None = None
    from_run: str | None = None
    n_dev: int = 20

    def to_dict(self) -> dict:
        return asdict(self)


def _json_ready(value):
    """Tuples (at any depth) as lists, as JSON gives them back."""
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class AnalysisConfig:
    """The settings every analysis (robustness, conflict, interpret) shares; each adds its own."""

    model: str = DEFAULT_MODEL
    shots: int = 5
    n_dummy: int = 2
    seed: int = 41
    layers: LayerOptions = field(default_factory=LayerOptions)
    dtype: str = "float32"
    batch_size: int = 32

    def to_dict(self) -> dict:
        return _json_ready(asdict(self))


def prepare_tasks(lm: LoadedModel, names: Sequence[str], shots: int, n_dummy: int) -> dict[str, PreparedTask]:
    """Each named built-in task with its one-token pairs; refuses tasks that cannot fill one prompt."""
    prepared = {}
    floor = minimum_pairs(shots, n_dummy)
    for name in names:
        if name in prepared:
            continue
        p = prepare_task(lm, builtin_task(name))
        if p.n_usable < floor:
            raise TaskDataError(
                f"task {name!r} has {p.n_usable} pairs with a one-token answer for this model but needs "
                f"{floor} for shots={shots} and n_dummy={n_dummy}"
            )
        prepared[name] = p
    return prepared


def layers_from_run(path: str | Path, lm: LoadedModel, names: Sequence[str]) -> dict[str, int]:
    """Each task's best layer from a ``taskvec run`` directory (or its results.json)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
        tasks = results["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TaskvecError(f"--from-run {str(path)!r}: not a taskvec run directory with results.json ({exc})") from exc
    run_model = results.get("model") or {}
    if run_model.get("num_layers") != lm.num_layers or run_model.get("id") != lm.model_id:
        raise TaskvecError(
            f"--from-run {str(path)!r} is a run of {run_model.get('id')!r} ({run_model.get('num_layers')} layers), "
            f"not of the loaded model {lm.model_id!r} ({lm.num_layers} layers)"
        )
    missing = [n for n in names if not isinstance((tasks.get(n) or {}).get("best_layer"), int)]
    if missing:
        raise TaskvecError(f"--from-run {str(path)!r} has no best layer for task(s) {', '.join(missing)}")
    return {n: tasks[n]["best_layer"] for n in names}


def analysis_executor(lm: LoadedModel, config: AnalysisConfig, kind: str = "fast") -> Executor:
    """The executor an analysis runs on: ``kind`` with the config's batch size; the analyses' predictions are
    not rechecked under mixed precision (only the main experiment's test predictions are)."""
    return make_executor(lm, kind, config.batch_size, recheck_margin=None)


def choose_layers(
    executor: Executor,
    prepared: dict[str, PreparedTask],
    options: LayerOptions,
    *,
    shots: int,
    n_dummy: int,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, dict]:
    """``{task: {"layer": int, "source": "given" | "run" | "sweep", "dev_accuracy_by_layer": [...]?}}``."""
    lm = executor.lm
    if options.layer is not None:
        (layer,) = check_layers(lm, [options.layer])
        return {name: {"layer": layer, "source": "given"} for name in prepared}
    if options.from_run is not None:
        found = layers_from_run(options.from_run, lm, list(prepared))
        return {name: {"layer": layer, "source": "run"} for name, layer in found.items()}
    chosen = {}
    for name, p in prepared.items():
        if progress:
            progress(f"layer sweep {name}")
        dev = draw_splits(p.pairs, shots, options.n_dev, 0, 0, n_dummy, task_rng(seed, f"{name}:layers"))[0]
        accuracy = dev_sweep(executor, p, dev)[0]
        chosen[name] = {"layer": best_layer(accuracy), "source": "sweep", "dev_accuracy_by_layer": accuracy}
        logger.info("task %s: layer %d by a sweep of %d dev sets", name, chosen[name]["layer"], options.n_dev)
    return chosen


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (files of an earlier analysis there are replaced) and check it is writable."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".taskvec-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputDirectoryError(f"output directory {str(out)!r} is not writable: {exc.strerror or exc}") from exc
    return out


def run_header(lm: LoadedModel, analysis: str, config: dict, started: float) -> dict:
    """The metadata every analysis result starts with: what ran, on which model, with which versions."""
    return {
        "analysis": analysis,
        "taskvec_version": versions()["taskvec"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": config.get("seed"),
        "config": {**config, "model": lm.model_id},  # the loaded model, also when one was passed in
        "model": model_info(lm),
        "versions": versions(),
        "timing": {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb(), 1)},
    }
