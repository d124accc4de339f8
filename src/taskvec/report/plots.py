"""Plots of a results dict (see docs/results-format.md), returned as PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` directly, so no pyplot state and no GUI backend
are involved; the module is safe in threads and headless processes.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

logger = logging.getLogger(__name__)

DPI = 100
CATEGORY_ORDER = ("algorithmic", "translation", "linguistic", "knowledge")  # the paper's order
COLORS = {"baseline": "#9e9e9e", "hypothesis": "#1f77b4", "regular": "#2ca02c", "best": "#d62728"}
LABELS = {"baseline": "Baseline", "hypothesis": "Task vector", "regular": "Regular ICL"}
METHODS = ("baseline", "hypothesis", "regular")


#: Task and model names come from data: "$" in them must print as "$", not start matplotlib mathtext.
literal_text = matplotlib.rc_context({"text.parse_math": False})


def num(value: Any) -> float:
    """``value`` as a float; NaN for None, booleans and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def accuracy(task: dict[str, Any], method: str) -> float:
    """The test accuracy of ``method`` (regular / hypothesis / baseline) of one task entry, or NaN."""
    stats = task.get(method)
    return num(stats.get("accuracy")) if isinstance(stats, dict) else math.nan


def num_layers(results: dict[str, Any]) -> int:
    """The model's number of decoder blocks (from ``model.num_layers``, else the longest dev curve)."""
    n = (results.get("model") or {}).get("num_layers")
    if isinstance(n, int) and n > 0:
        return n
    curves = [t.get("dev_accuracy_by_layer") or [] for t in results.get("tasks", {}).values()]
    return max((len(c) for c in curves), default=0)


def ordered_tasks(results: dict[str, Any]) -> list[str]:
    """Task names grouped by category: the paper's categories first, then others by first appearance.

    Within a category, tasks keep the order of ``results["tasks"]``.
    """
    tasks = results.get("tasks", {})
    seen: list[str] = []
    for entry in tasks.values():
        category = str(entry.get("category", "other"))
        if category not in seen:
            seen.append(category)
    categories = [c for c in CATEGORY_ORDER if c in seen] + [c for c in seen if c not in CATEGORY_ORDER]
    return [name for c in categories for name, entry in tasks.items() if str(entry.get("category", "other")) == c]


def mean_curve(results: dict[str, Any]) -> np.ndarray:
    """Mean over tasks of dev accuracy by layer (NaN where no task has a value)."""
    n = num_layers(results)
    rows = []
    for entry in results.get("tasks", {}).values():
        curve = [num(v) for v in (entry.get("dev_accuracy_by_layer") or [])][:n]
        if curve:
            rows.append(curve + [math.nan] * (n - len(curve)))
    if not rows or n == 0:
        return np.full(n, math.nan)
    data = np.array(rows, dtype=float)
    counts = np.sum(~np.isnan(data), axis=0)
    sums = np.nansum(data, axis=0)
    return np.divide(sums, counts, out=np.full(n, math.nan), where=counts > 0)


def _mean_of(results: dict[str, Any], method: str) -> float:
    values = [accuracy(t, method) for t in results.get("tasks", {}).values()]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


@literal_text
def _empty(message: str) -> bytes:
    fig = Figure(figsize=(5, 2), dpi=DPI)
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return _png(fig)


def _model_name(results: dict[str, Any]) -> str:
    return str((results.get("model") or {}).get("id") or (results.get("config") or {}).get("model") or "model")


def _hline(ax: Axes, y: float, method: str) -> None:
    if not math.isnan(y):
        ax.axhline(y, color=COLORS[method], linestyle="--", linewidth=1.2)


@literal_text
def accuracy_by_layer_per_task(results: dict[str, Any]) -> bytes:
    """One small panel per task: dev accuracy by layer, regular ICL and baseline dashed, best layer marked."""
    names = ordered_tasks(results)
    if not names:
        return _empty("no tasks")
    ncols = min(6, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(2.3 * ncols, 1.9 * nrows + 0.7), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        entry = results["tasks"][name]
        curve = [num(v) for v in (entry.get("dev_accuracy_by_layer") or [])]
        ax.plot(range(len(curve)), curve, color=COLORS["hypothesis"], marker="o", markersize=2.5, linewidth=1.2)
        _hline(ax, accuracy(entry, "regular"), "regular")
        _hline(ax, accuracy(entry, "baseline"), "baseline")
        best = entry.get("best_layer")
        if isinstance(best, int) and 0 <= best < len(curve):
            ax.plot([best], [curve[best]], marker="*", markersize=10, color=COLORS["best"], linestyle="none")
        ax.set_title(name if len(name) <= 24 else name[:23] + "…", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    fig.supxlabel("layer (0-indexed block)", fontsize=9)
    fig.supylabel("dev accuracy", fontsize=9)
    handles = [
        Line2D([], [], color=COLORS["hypothesis"], marker="o", markersize=3, label="Task vector (dev)"),
        Line2D([], [], color=COLORS["regular"], linestyle="--", label="Regular ICL (test)"),
        Line2D([], [], color=COLORS["baseline"], linestyle="--", label="Baseline (test)"),
        Line2D([], [], color=COLORS["best"], marker="*", markersize=9, linestyle="none", label="best layer"),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=8, frameon=False)
    return _png(fig)


@literal_text
def accuracy_by_layer_mean(results: dict[str, Any]) -> bytes:
    """Mean over tasks of dev accuracy by layer; top axis in fraction of depth; mean regular and baseline."""
    n = num_layers(results)
    curve = mean_curve(results)
    if n == 0 or np.all(np.isnan(curve)):
        return _empty("no layer sweep data")
    fig = Figure(figsize=(7, 4.8), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(range(n), curve, color=COLORS["hypothesis"], marker="o", markersize=3.5, label="Task vector (dev, mean)")
    for method in ("regular", "baseline"):
        y = _mean_of(results, method)
        if not math.isnan(y):
            ax.axhline(y, color=COLORS[method], linestyle="--", label=f"{LABELS[method]} (test, mean {y:.2f})")
    best = int(np.nanargmax(curve))
    ax.plot(
        [best],
        [curve[best]],
        marker="*",
        markersize=13,
        color=COLORS["best"],
        linestyle="none",
        label=f"best mean layer: {best} ({best / n:.2f})",
    )
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("layer (0-indexed block)")
    ax.set_ylabel("accuracy")
    top = ax.secondary_xaxis("top", functions=(lambda x: x / n, lambda f: f * n))
    top.set_xlabel("fraction of depth (layer / num_layers)")
    ax.set_title(f"{_model_name(results)}: mean over {len(results.get('tasks', {}))} tasks", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _png(fig)


@literal_text
def bars_figure(results: dict[str, Any]) -> Figure:
    """The grouped-bar figure of :func:`bars_per_task` (exposed so tests can check its tick labels)."""
    names = ordered_tasks(results)
    width = 0.27
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 1.5), 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    # Each category is followed by a gap of one slot; centres[i] is the centre of task i's group.
    centres: list[float] = []
    spans: list[tuple[str, float, float]] = []
    x = 0.0
    for i, name in enumerate(names):
        category = str(results["tasks"][name].get("category", "other"))
        if i > 0 and category != spans[-1][0]:
            x += 0.6
        if not spans or spans[-1][0] != category:
            spans.append((category, x, x))
        centres.append(x)
        spans[-1] = (category, spans[-1][1], x)
        x += 1.0
    for k, method in enumerate(METHODS):
        heights = [accuracy(results["tasks"][name], method) for name in names]
        offsets = [c + (k - 1) * width for c in centres]
        ax.bar(offsets, np.nan_to_num(heights), width=width, color=COLORS[method], label=LABELS[method])
    ax.set_xticks(centres, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    for j, (category, start, end) in enumerate(spans):
        ax.text((start + end) / 2, 1.04, category, ha="center", va="bottom", fontsize=9, fontweight="bold")
        if j % 2:
            ax.axvspan(start - 0.5, end + 0.5, color="#f2f2f2", zorder=0)
    ax.set_ylim(0, 1.12)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    if centres:
        ax.set_xlim(centres[0] - 0.6, centres[-1] + 0.6)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{_model_name(results)}: test accuracy per task", fontsize=11)
    fig.legend(loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    return fig


def bars_per_task(results: dict[str, Any]) -> bytes:
    """Grouped bars (Baseline / Task vector / Regular ICL) per task, tasks grouped by category."""
    if not results.get("tasks"):
        return _empty("no tasks")
    return _png(bars_figure(results))


@literal_text
def layer_curves_overlay(list_of_results: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> bytes:
    """Mean dev accuracy by fraction of depth (layer / num_layers), one line per run."""
    if labels is None:
        labels = [_model_name(r) for r in list_of_results]
    fig = Figure(figsize=(7, 4.2), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    drawn = 0
    for results, label in zip(list_of_results, labels, strict=True):
        n = num_layers(results)
        curve = mean_curve(results)
        if n == 0 or np.all(np.isnan(curve)):
            logger.warning("run %s has no layer sweep data; left out of the overlay plot", label)
            continue
        ax.plot(np.arange(n) / n, curve, marker="o", markersize=3, label=f"{label} ({n} layers)")
        drawn += 1
    ax.set_xlim(-0.02, 1.0)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("fraction of depth (layer / num_layers)")
    ax.set_ylabel("mean dev accuracy (task vector)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return _png(fig)
