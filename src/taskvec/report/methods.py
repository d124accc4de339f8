"""The method comparison part of a run's report (``taskvec run --methods tv,fv``): methods and controls as
columns, a per-layer dev curve per method, and the head-attribution heatmap (mean AIE over tasks)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from taskvec.report.plots import DPI, _empty, _model_name, _png, literal_text, num, num_layers, ordered_tasks

#: Columns of the comparison, in order: (key in a task's methods/controls, or regular/baseline; header).
_SHORT = (("task_vector", "TV"), ("function_vector", "FV"), ("in_context_vector", "ICV"),
          ("mean_difference", "MD"), ("icl_shift", "Shift"))
COLUMNS = (
    ("baseline", "Zero-shot"),
    ("regular", "ICL"),
    *((key, short) for key, short in _SHORT),
    *((f"{key}_random", f"{short} random") for key, short in _SHORT),
    *((f"{key}_task_agnostic", f"{short} task-agnostic") for key, short in _SHORT),
    ("shuffled_icl", "Shuffled ICL"),
    *((f"shuffled_icl+{key}", f"Shuffled ICL + {short}") for key, short in _SHORT),
)
NOTE = (
    "TV: task vector (replaces block L's output at the last token); FV: function vector (added there); ICV: "
    "In-Context Vector (steers every position of every layer, or of the one layer chosen on dev, norm kept); MD: "
    "mean difference h(answer) - h(input) (added at every position); Shift: mean ICL shift h(ICL prompt) - h(bare "
    "query) (added at every position). Random: a random vector of the method's norm (at each layer) applied the same "
    "way; task-agnostic: the method's vector averaged over the other tasks; shuffled ICL: demonstrations with their "
    "outputs permuted. 'ICL-correct': accuracy on the test items that regular ICL answers correctly; 'recovered': "
    "accuracy / ICL accuracy."
)


def compares(results: dict[str, Any]) -> bool:
    return "methods" in (results.get("summary") or {})


def _entry(task: dict[str, Any], key: str) -> dict[str, Any] | None:
    if key in ("baseline", "regular"):
        return task.get(key)
    return {**task.get("methods", {}), **task.get("controls", {})}.get(key)


def _columns(results: dict[str, Any]) -> list[tuple[str, str]]:
    present = set(results["summary"]["methods"]) | {"baseline", "regular"}
    return [(k, h) for k, h in COLUMNS if k in present]


def _f(x: Any) -> str:
    value = num(x)
    return "-" if math.isnan(value) else f"{value:.2f}"


def method_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the comparison tables: per task (all items), and the means."""
    columns = _columns(results)
    header = ["Task", *(h for _, h in columns)]
    rows = []
    for name in ordered_tasks(results):
        task = results["tasks"][name]
        rows.append([name, *(_f((_entry(task, k) or {}).get("accuracy")) for k, _ in columns)])
    means = results["summary"]["methods"]
    mean_all = results["summary"]["mean"] or {}
    mean_rows = [
        ["all items", *(_f(mean_all.get(k) if k in ("baseline", "regular") else means.get(k, {}).get("accuracy"))
                        for k, _ in columns)],
        ["ICL-correct items", *("-" if k in ("baseline", "regular") else _f(means.get(k, {}).get("icl_correct"))
                                for k, _ in columns)],
        ["recovered (of ICL)", *("-" if k in ("baseline", "regular") else _f(means.get(k, {}).get("recovered"))
                                 for k, _ in columns)],
    ]  # fmt: skip
    fv_rows = []
    for name in ordered_tasks(results):
        fv = results["tasks"][name].get("function_vector")
        if fv:
            tv_layer = results["tasks"][name].get("best_layer")
            heads = " ".join(f"L{li}H{j}" for li, j in fv["heads"][:5]) + (" ..." if fv["k"] > 5 else "")
            fv_rows.append([name, str(tv_layer), str(fv["layer"]), str(fv["k"]), f"{fv['scale']:g}",
                            _dev_score(fv.get("selection") or {}), heads])  # fmt: skip
    tables = [("Methods and controls per task (test accuracy, all items)", header, rows),
              ("Means over tasks", ["", *(h for _, h in columns)], mean_rows)]  # fmt: skip
    if fv_rows:
        tables.append(("Chosen on dev", ["Task", "TV layer", "FV layer", "FV k", "FV scale", "FV dev accuracy",
                                         "FV heads (best first)"], fv_rows))  # fmt: skip
    every_rows = [[name, method, "every" if c["layer"] is None else str(c["layer"]), f"{c['strength']:g}",
                   _f(c["dev_accuracy"])]
                  for name in ordered_tasks(results)
                  for method, c in (results["tasks"][name].get("every_position") or {}).items()]  # fmt: skip
    if every_rows:
        tables.append(("Every-position methods chosen on dev", ["Task", "Method", "Layer(s)", "Strength / scale",
                                                                "Dev accuracy"], every_rows))  # fmt: skip
    return tables


def _dev_score(selection: dict[str, Any]) -> str:
    """The chosen configuration's dev accuracy; 'none worked' when no configuration answered any dev query
    (the first one of the grid was kept, so the task's FV numbers are those of a vector that does not work)."""
    if "best_dev_accuracy" not in selection:
        return "-"
    if num(selection["best_dev_accuracy"]) == 0:  # what selection.none_worked records (absent in older runs)
        return "0.00 (none worked)"
    return _f(selection["best_dev_accuracy"])


def mean_aie(results: dict[str, Any]) -> np.ndarray | None:
    """The AIE table averaged over the tasks that have one (layers x heads), or None."""
    tables = [t["function_vector"]["attribution"]["aie"] for t in results.get("tasks", {}).values()
              if (t.get("function_vector") or {}).get("attribution")]  # fmt: skip
    if not tables:
        return None
    return np.nanmean(np.array([[[num(v) for v in row] for row in table] for table in tables]), axis=0)


def top_heads(aie: np.ndarray, k: int = 10) -> list[tuple[int, int, float]]:
    order = np.argsort(-np.nan_to_num(aie, nan=-np.inf), axis=None)[:k]
    return [(int(i // aie.shape[1]), int(i % aie.shape[1]), float(aie.flat[i])) for i in order]


def aie_heatmap(results: dict[str, Any]) -> bytes:
    aie = mean_aie(results)
    if aie is None:
        return _empty("no head attribution")
    return heatmap_png(aie, f"{_model_name(results)}: head attribution, mean over tasks")


@literal_text
def heatmap_png(aie: np.ndarray, title: str) -> bytes:
    """A layer x head heatmap of an AIE table."""
    fig = Figure(figsize=(max(5.0, 0.35 * aie.shape[1] + 2), max(4.0, 0.3 * aie.shape[0] + 1.5)), dpi=DPI,
                 layout="constrained")  # fmt: skip
    ax = fig.subplots()
    image = ax.imshow(aie, aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label="mean AIE (rise in p(gold first token))")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=11)
    return _png(fig)


@literal_text
def method_layer_curves(results: dict[str, Any]) -> bytes:
    """Mean dev accuracy by layer: the task vector (replaced at the layer), the function vector (added at the
    layer, at each task's chosen k and scale)."""
    n = num_layers(results)
    curves = {}
    for label, key in (("Task vector", None), ("Function vector", "function_vector")):
        rows = []
        for task in results.get("tasks", {}).values():
            source = task if key is None else (task.get(key) or {})
            curve = source.get("dev_accuracy_by_layer")
            if curve and len(curve) == n:
                rows.append([num(v) for v in curve])
        if rows:
            curves[label] = np.nanmean(np.array(rows), axis=0)
    if not curves or n == 0:
        return _empty("no layer curves")
    fig = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for label, curve in curves.items():
        ax.plot(range(n), curve, marker="o", markersize=3.5, label=f"{label} (dev, mean)")
    ax.set_xlabel("layer (0-indexed block)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_title(f"{_model_name(results)}: mean dev accuracy by layer, per method", fontsize=11)
    ax.legend(fontsize=8)
    return _png(fig)


def heads_lines(results: dict[str, Any], k: int = 10) -> list[str]:
    aie = mean_aie(results)
    if aie is None:
        return []
    return [f"L{li}H{j}: {v:.4f}" for li, j, v in top_heads(aie, k)]
