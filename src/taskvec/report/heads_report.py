"""The report of ``taskvec heads``: the top heads (overall and per task) and AIE heatmaps."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from taskvec.io.atomic import write_text_atomic
from taskvec.report.methods import heatmap_png
from taskvec.report.render import _html_table, _md_table, html_figures, html_page


def _table(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=float)


def _heads(items: list[dict], key: str, k: int = 5) -> str:
    return ", ".join(f"L{h['layer']}H{h['head']} ({h[key]:.3f})" for h in items[:k])


def _rows(results: dict[str, Any]) -> list[list[str]]:
    return [[name, str(t.get("category", "")), f"{t['baseline_probability']:.3f}", _heads(t["top_heads"], "aie")]
            for name, t in results["tasks"].items()]  # fmt: skip


HEADER = ["Task", "Category", "p(gold) shuffled", "Top heads (AIE)"]


def write_heads_report(out_dir: str | os.PathLike[str], results: dict[str, Any]) -> dict[str, Path]:
    out = Path(out_dir)
    model = results["model"]["id"]
    title = f"Head attribution: {model}"
    c = results["config"]
    setup = (f"{len(results['tasks'])} tasks; per task {c['n_prompts']} clean and {c['n_prompts']} shuffled-label "
             f"prompts of {c['shots']} demonstrations; AIE = mean rise in p(gold first token) when one head's "
             "last-token output is set to its clean mean")  # fmt: skip
    overall = _heads(results["top_heads"], "mean_aie", 10)
    md = [f"# {title}", "", setup, "", f"Top heads, mean over tasks: {overall}", "", "## Per task", "",
          *_md_table(HEADER, _rows(results)), "", "Heatmaps are in report.html.", ""]  # fmt: skip
    plots = {f"aie_{model}": heatmap_png(_table(results["mean_aie"]), f"{model}: mean AIE over tasks")}
    for name, t in results["tasks"].items():
        plots[name] = heatmap_png(_table(t["aie"]), f"{model}: {name}")
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", f"<p>{e(setup)}</p>", f"<p>Top heads, mean over tasks: {e(overall)}</p>",
            "<h2>Per task</h2>", _html_table(HEADER, _rows(results), 4), "<h2>Heatmaps</h2>",
            *html_figures(plots)]  # fmt: skip
    paths = {"md": out / "report.md", "html": out / "report.html"}
    write_text_atomic(paths["md"], "\n".join(md))
    write_text_atomic(paths["html"], html_page(title, body))
    return paths
