"""Conflicting tasks (paper, "further experiments"): task B's theta patched into task A's *full* ICL prompt.

Regular ICL on A's prompt is scored against A's answers; with theta(B) replacing the output of block
layer(B) at the prompt's last position, the answers are scored against A's and against B's answers. When
theta drives the answer, the model follows B although the demonstrations show A.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.methods import TASK_VECTOR
from taskvec.errors import TaskDataError, TaskvecError
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
from taskvec.stats import accuracy_entry
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.registry import builtin_task
from taskvec.tasks.sampling import build_sets, query_stream
from taskvec.tasks.scoring import is_correct

#: The paper's pairs (A, B): A's demonstrations, B's task vector.
PAPER_PAIRS: tuple[tuple[str, str], ...] = (
    ("next_letter", "to_upper"),
    ("list_last", "list_first"),
    ("prev_letter", "next_letter"),
    ("present_past", "present_gerund"),
    ("en_es", "en_fr"),
)
#: The paper's LLaMA-13B numbers: (ICL accuracy on A, task-vector-patched accuracy on B).
PAPER_NUMBERS: dict[tuple[str, str], tuple[float, float]] = {
    ("next_letter", "to_upper"): (0.91, 0.77),
    ("list_last", "list_first"): (0.95, 0.78),
    ("prev_letter", "next_letter"): (0.51, 0.74),
    ("present_past", "present_gerund"): (0.98, 0.97),
    ("en_es", "en_fr"): (0.93, 0.07),
}


@dataclass(frozen=True)
class ConflictConfig(AnalysisConfig):
    pairs: tuple[tuple[str, str], ...] = PAPER_PAIRS
    n_sets: int = 50
    min_queries: int = 10


def parse_pairs(spec: str) -> tuple[tuple[str, str], ...]:
    """``"a:b,c:d"`` -> ((a, b), (c, d)); every name must be a built-in task."""
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        names = [n.strip() for n in item.split(":")]
        if len(names) != 2 or not all(names):
            raise TaskvecError(f"task pair {item!r} is not of the form A:B (A's prompt, B's task vector)")
        if names[0] == names[1]:
            raise TaskvecError(f"task pair {item!r} names the same task twice; a conflict needs two tasks")
        for name in names:
            builtin_task(name)  # raises for unknown names
        pairs.append((names[0], names[1]))
    if not pairs:
        raise TaskvecError(f"no task pairs in {spec!r}; expected A:B[,C:D...]")
    return tuple(pairs)


def shared_queries(a: PreparedTask, b: PreparedTask, minimum: int) -> list[str]:
    """Inputs of both tasks whose answers are one token in both; refuses fewer than ``minimum``."""
    b_inputs = {p.input for p in b.pairs}
    shared = list(dict.fromkeys(p.input for p in a.pairs if p.input in b_inputs))
    if len(shared) < minimum:
        raise TaskDataError(
            f"tasks {a.name!r} and {b.name!r} are incompatible for the conflict experiment: {len(shared)} "
            f"queries are valid inputs of both with one-token answers for both ({a.n_usable} of {a.name}, "
            f"{b.n_usable} of {b.name}); need at least {minimum}"
        )
    return shared


def conflict_pair(
    executor: Executor, a: PreparedTask, b: PreparedTask, layer_b: int, config: ConflictConfig
) -> tuple[dict, list[dict]]:
    """ICL on A's prompts, and the same prompts with theta(B) patched at ``layer_b``; scored vs A and vs B."""
    shared = shared_queries(a, b, config.min_queries)
    rng = task_rng(config.seed, f"{a.name}:{b.name}")
    a_by_input = {p.input: p for p in a.pairs}
    b_by_input = {p.input: p for p in b.pairs}
    queries_a = query_stream(tuple(a_by_input[x] for x in shared), config.n_sets, rng)
    queries_b = [b_by_input[q.input] for q in queries_a]
    sets_a = build_sets(a.pairs, queries_a, config.shots, 0, rng)
    sets_b = build_sets(b.pairs, queries_b, config.shots, config.n_dummy, rng)
    theta_b = set_vectors(executor, b.template, sets_b, [layer_b])[:, 0, :]
    prompts = [a.template.icl_prompt(s.demo_tuples, s.query.input) for s in sets_a]
    icl = decode_predictions(executor.lm, executor.predict(prompts).ids)
    edits = [TASK_VECTOR.edits(layer_b, v) for v in theta_b]
    patched = decode_predictions(executor.lm, executor.predict(prompts, edits).ids)

    def score(preds: list[str], task: PreparedTask, gold) -> list[bool]:
        return [is_correct(p, g, task.task.scoring) for p, g in zip(preds, gold)]

    paper = PAPER_NUMBERS.get((a.name, b.name))
    result = {
        "a": a.name,
        "b": b.name,
        "layer_b": layer_b,
        "n_shared_queries": len(shared),
        "icl_vs_a": accuracy_entry(score(icl, a, queries_a)),
        "icl_vs_b": accuracy_entry(score(icl, b, queries_b)),
        "patched_vs_a": accuracy_entry(score(patched, a, queries_a)),
        "patched_vs_b": accuracy_entry(score(patched, b, queries_b)),
        "paper_llama13b": {"icl_vs_a": paper[0], "patched_vs_b": paper[1]} if paper else None,
    }
    rows = [
        {
            "a": a.name,
            "b": b.name,
            "set": i,
            "prompt": prompt,
            "query": qa.input,
            "gold_a": qa.output,
            "gold_b": qb.output,
            "icl": ip,
            "patched": pp,
        }
        for i, (prompt, qa, qb, ip, pp) in enumerate(zip(prompts, queries_a, queries_b, icl, patched))
    ]
    return result, rows


def run_conflict(
    config: ConflictConfig,
    lm: LoadedModel | None = None,
    progress: Progress | None = None,
    *,
    executor: Executor | None = None,
) -> tuple[dict, list[dict]]:
    """All pairs; the results dict and one row per prompt. Incompatible pairs are refused before any run.
    ``executor`` runs the model (default: :func:`analysis_executor`)."""
    started = time.perf_counter()
    if not config.pairs:
        raise TaskvecError("no task pairs given")
    lm = executor.lm if executor else lm or load_model(config.model, dtype=config.dtype)
    executor = executor or analysis_executor(lm, config)
    names = list(dict.fromkeys(n for pair in config.pairs for n in pair))
    prepared = prepare_tasks(lm, names, config.shots, config.n_dummy)
    for a, b in config.pairs:
        shared_queries(prepared[a], prepared[b], config.min_queries)
    thetas = {b for _, b in config.pairs}
    opts = dict(shots=config.shots, n_dummy=config.n_dummy, seed=config.seed)
    layers = choose_layers(executor, {n: prepared[n] for n in thetas}, config.layers, progress=progress, **opts)
    pairs, rows = [], []
    for a, b in config.pairs:
        if progress:
            progress(f"{a} <- theta({b})")
        result, pair_rows = conflict_pair(executor, prepared[a], prepared[b], layers[b]["layer"], config)
        result["layer_source"] = layers[b]["source"]
        pairs.append(result)
        rows += pair_rows
    results = run_header(lm, "conflict", config.to_dict(), started)
    results["pairs"] = pairs
    return results, rows
