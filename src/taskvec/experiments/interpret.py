"""Interpreting theta (paper, "further experiments"): its projection onto the vocabulary (logit lens)
through the model's own final norm and unembedding; the top tokens per task and layer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from taskvec.core.interfaces import Executor
from taskvec.engine.forward import check_layers
from taskvec.engine.projection import check_top_k, logit_softcap, projected_top_tokens
from taskvec.errors import TaskvecError
from taskvec.experiments.analysis_setup import (
    AnalysisConfig,
    Progress,
    analysis_executor,
    choose_layers,
    prepare_tasks,
    run_header,
)
from taskvec.experiments.main_experiment import set_vectors, task_rng
from taskvec.models.loading import LoadedModel, load_model
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.registry import PAPER_TASKS
from taskvec.tasks.sampling import draw_splits


@dataclass(frozen=True)
class InterpretConfig(AnalysisConfig):
    tasks: tuple[str, ...] = PAPER_TASKS
    extra_layers: tuple[int, ...] = ()  # --layers: project at these layers (default: the task's layer only)
    n_sets: int = 50
    n_single: int = 3
    top_k: int = 10
    words_only: bool = False


def _tokens(found: list[tuple[str, float]]) -> list[dict]:
    return [{"token": text, "logit": round(logit, 3)} for text, logit in found]


def interpret_task(
    executor: Executor, prepared: PreparedTask, layers: Sequence[int], config: InterpretConfig
) -> dict[str, dict[str, list]]:
    """Per layer: the top tokens of the mean theta over ``n_sets`` sets, and of the first ``n_single`` thetas."""
    sets = draw_splits(
        prepared.pairs, config.shots, config.n_sets, 0, 0, config.n_dummy, task_rng(config.seed, prepared.name)
    )[0]
    vectors = set_vectors(executor, prepared.template, sets, list(layers))  # (sets, layers, H)
    lm, out = executor.lm, {}
    for j, layer in enumerate(layers):
        mean = projected_top_tokens(lm, vectors[:, j].mean(dim=0), config.top_k, words_only=config.words_only)[0]
        singles = projected_top_tokens(lm, vectors[: config.n_single, j], config.top_k, words_only=config.words_only)
        out[str(layer)] = {"mean": _tokens(mean), "single": [_tokens(s) for s in singles]}
    return out


def run_interpret(
    config: InterpretConfig,
    lm: LoadedModel | None = None,
    progress: Progress | None = None,
    *,
    executor: Executor | None = None,
) -> dict:
    """Top tokens of theta per task and layer; the results dict. ``executor`` runs the model (default:
    :func:`analysis_executor`)."""
    started = time.perf_counter()
    if config.n_sets < 1 or config.n_single < 0:
        raise TaskvecError(
            f"--n-sets must be at least 1 and --n-single at least 0, got {config.n_sets}, {config.n_single}"
        )
    lm = executor.lm if executor else lm or load_model(config.model, dtype=config.dtype)
    executor = executor or analysis_executor(lm, config)
    check_top_k(lm, config.top_k)
    extra = check_layers(lm, config.extra_layers)
    prepared = prepare_tasks(lm, config.tasks, config.shots, config.n_dummy)
    if extra and config.layers.layer is None and config.layers.from_run is None:
        chosen = {n: {"layer": None, "source": "--layers"} for n in prepared}  # no sweep needed
    else:
        opts = dict(shots=config.shots, n_dummy=config.n_dummy, seed=config.seed)
        chosen = choose_layers(executor, prepared, config.layers, progress=progress, **opts)
    tasks = {}
    for name, p in prepared.items():
        if progress:
            progress(f"projection {name}")
        layers = list(dict.fromkeys(extra or [chosen[name]["layer"]]))
        tasks[name] = {
            "category": p.task.category,
            "best_layer": chosen[name]["layer"],
            "layer_source": chosen[name]["source"],
            "by_layer": interpret_task(executor, p, layers, config),
        }
    results = run_header(lm, "interpret", config.to_dict(), started)
    results["logit_softcapping"] = logit_softcap(lm)
    results["final_norm"] = type(lm.adapter.final_norm).__name__ if lm.adapter.final_norm is not None else None
    results["tasks"] = tasks
    return results
