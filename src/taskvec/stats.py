"""Accuracy with a 95% Wilson score interval, means over tasks, cosine distances between vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_Z95 = 1.959963984540054


def accuracy_entry(correct: Sequence[bool]) -> dict:
    n = len(correct)
    k = sum(bool(c) for c in correct)
    return {"accuracy": k / n if n else 0.0, "ci95": list(wilson_interval(k, n)), "n": n}


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval always holds p; clamp away rounding (k=0 must give exactly 0, k=n exactly 1).
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def summarize(task_results: dict[str, dict]) -> dict:
    """Means overall and by category of regular / hypothesis / baseline, and TV/ICL."""

    def means(items: list[dict]) -> dict:
        out: dict = {}
        for method in ("regular", "hypothesis", "baseline"):
            values = [t[method]["accuracy"] for t in items if isinstance(t.get(method), dict)]
            out[method] = sum(values) / len(values) if values else None
        reg, hyp = out["regular"], out["hypothesis"]
        out["tv_over_icl"] = hyp / reg if reg and hyp is not None else None
        out["n_tasks"] = len(items)
        return out

    tasks = list(task_results.values())
    if not tasks:
        return {"mean": None, "by_category": {}, "mean_best_layer_fraction": None}
    categories: dict[str, list[dict]] = {}
    for t in tasks:
        categories.setdefault(str(t.get("category", "other")), []).append(t)
    fractions = [t["best_layer_fraction"] for t in tasks if isinstance(t.get("best_layer_fraction"), (int, float))]
    summary = {
        "mean": means(tasks),
        "by_category": {c: means(items) for c, items in categories.items()},
        "mean_best_layer_fraction": sum(fractions) / len(fractions) if fractions else None,
    }
    if any("methods" in t for t in tasks):
        summary["methods"] = method_means(tasks)
    return summary


def method_means(tasks: list[dict]) -> dict:
    """Per method and control (``methods`` and ``controls`` of the tasks that have them), the mean over tasks
    of accuracy on all items, accuracy on the ICL-correct items and the fraction of ICL recovered."""
    entries: dict[str, list[dict]] = {}
    for t in tasks:
        for name, entry in {**t.get("methods", {}), **t.get("controls", {})}.items():
            entries.setdefault(name, []).append(entry)

    def mean(values: list) -> float | None:
        values = [v for v in values if isinstance(v, (int, float))]
        return sum(values) / len(values) if values else None

    return {
        name: {
            "accuracy": mean([e["accuracy"] for e in items]),
            "icl_correct": mean([e["icl_correct"]["accuracy"] for e in items if e["icl_correct"]["n"]]),
            "recovered": mean([e.get("recovered") for e in items]),
            "n_tasks": len(items),
        }
        for name, items in entries.items()
    }


def cosine_distance_matrix(vectors: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between every two rows."""
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
