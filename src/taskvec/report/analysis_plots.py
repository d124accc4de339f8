"""Plots of the robustness analysis (embeddings coloured by task or category, distance histograms), as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from taskvec.report.plots import DPI, _png


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def scatter_by_label(
    points: Sequence[Sequence[float]], labels: Sequence[str], title: str, axis_labels: tuple[str, str]
) -> bytes:
    """2-D points, one colour per label (legend outside the axes), axes named by ``axis_labels``."""
    xy = np.asarray(points, dtype=float)
    names = list(dict.fromkeys(labels))
    fig = Figure(figsize=(9, 6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    label_arr = np.asarray(labels)
    for name, color in zip(names, _colors(len(names))):
        mine = label_arr == name
        ax.scatter(xy[mine, 0], xy[mine, 1], s=12, color=color, label=name, alpha=0.8, linewidths=0)
    ax.set_title(title)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.tick_params(labelsize=7)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, markerscale=1.5)
    return _png(fig)


def distance_histograms(distances: np.ndarray, labels: Sequence[str]) -> bytes:
    """Per task: histogram of cosine distances within the task vs to the other tasks' vectors."""
    names = list(dict.fromkeys(labels))
    label_arr = np.asarray(labels)
    ncols = min(6, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(2.4 * ncols, 1.9 * nrows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    bins = np.linspace(0.0, float(max(distances.max(), 1e-6)), 31)
    for ax, name in zip(axes.flat, names, strict=False):
        mine = label_arr == name
        within = distances[np.ix_(mine, mine)][np.triu_indices(int(mine.sum()), k=1)]
        across = distances[np.ix_(mine, ~mine)].ravel()
        ax.hist(across, bins=bins, density=True, color="#9e9e9e", alpha=0.7, label="across")
        ax.hist(within, bins=bins, density=True, color="#1f77b4", alpha=0.7, label="within")
        ax.set_title(name if len(name) <= 24 else name[:23] + "…", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("density", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("cosine distance", fontsize=8)
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle("Cosine distance of task vectors: within the task (blue) vs to other tasks (grey)", fontsize=10)
    return _png(fig)
