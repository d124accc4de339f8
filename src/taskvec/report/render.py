"""The run report: report.md (tables only) and report.html (self-contained: tables and base64 plots)."""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from taskvec.io.atomic import write_text_atomic as atomic_write
from taskvec.report import methods as method_report
from taskvec.report import plots as plotting
from taskvec.report.plots import accuracy, num, ordered_tasks
from taskvec.stats import summarize

logger = logging.getLogger(__name__)

TV_FAIL_RATIO = 0.5  # a task vector "fails" when hypothesis < TV_FAIL_RATIO * regular
PLOT_TITLES = {
    "bars": "Test accuracy per task",
    "mean_by_layer": "Mean dev accuracy by layer",
    "per_task_by_layer": "Dev accuracy by layer, per task",
    "overlay": "Mean dev accuracy by fraction of depth, per model",
    "method_curves": "Mean dev accuracy by layer, per method",
    "aie_heatmap": "Head attribution: mean AIE over tasks (layer x head)",
}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1500px;color:#222;
padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px}th{background:#f0f0f0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fff1f0}figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}
.meta{color:#555;font-size:14px}
"""


def fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; "n/a" when missing."""
    x = num(value)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def fmt_stats(stats: Any) -> str:
    """An accuracy with its 95% interval, like ``0.84 [0.71, 0.92]``."""
    if not isinstance(stats, dict):
        return "n/a"
    ci = stats.get("ci95")
    text = fmt(stats.get("accuracy"))
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and text != "n/a":
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return text


def fmt_best_layer(entry: dict[str, Any], n_layers: int) -> str:
    """``11 (0.61)``: the best layer and its fraction of depth."""
    best = entry.get("best_layer")
    if not isinstance(best, int):
        return "n/a"
    fraction = num(entry.get("best_layer_fraction"))
    if math.isnan(fraction) and n_layers:
        fraction = best / n_layers
    return f"{best} ({fmt(fraction)})"


def failing_tasks(results: dict[str, Any]) -> list[str]:
    """Tasks where the task vector fails: hypothesis < 0.5 * regular."""
    out = []
    for name in ordered_tasks(results):
        entry = results["tasks"][name]
        hyp, reg = accuracy(entry, "hypothesis"), accuracy(entry, "regular")
        if not math.isnan(hyp) and not math.isnan(reg) and hyp < TV_FAIL_RATIO * reg:
            out.append(name)
    return out


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    stored = results.get("summary")
    if isinstance(stored, dict) and isinstance(stored.get("mean"), dict):
        return stored
    return summarize(results.get("tasks", {}))


def _category_names(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    order = [str(results["tasks"][t].get("category", "other")) for t in ordered_tasks(results)]
    order += list(summary.get("by_category", {}))
    return list(dict.fromkeys(order))


def _tables(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(header, rows) of the per-task table and of the category-means table (last row: all tasks)."""
    n_layers = plotting.num_layers(results)
    task_header = ["Task", "Category", "Usable pairs", "Baseline", "Task vector", "Regular ICL", "Best layer (frac.)"]
    task_rows = []
    for name in ordered_tasks(results):
        e = results["tasks"][name]
        usable = f"{e.get('n_usable', 'n/a')}/{e.get('n_pairs', 'n/a')}"
        row = [name, str(e.get("category", "other")), usable]
        row += [fmt_stats(e.get(m)) for m in plotting.METHODS] + [fmt_best_layer(e, n_layers)]
        task_rows.append(row)
    summary = _summary(results)
    cat_header = ["Category", "Tasks", "Baseline", "Task vector", "Regular ICL", "TV/ICL"]
    cat_rows = []
    groups = [(c, summary.get("by_category", {}).get(c, {})) for c in _category_names(results, summary)]
    for label, m in [*groups, ("all tasks", summary["mean"])]:
        cat_rows.append(
            [label, str(m.get("n_tasks", "n/a"))] + [fmt(m.get(k)) for k in (*plotting.METHODS, "tv_over_icl")]
        )
    return task_header, task_rows, cat_header, cat_rows


def model_id(results: dict[str, Any]) -> str:
    return str((results.get("model") or {}).get("id") or (results.get("config") or {}).get("model") or "unknown model")


def config_line(results: dict[str, Any]) -> str:
    c = results.get("config") or {}
    keys = ("shots", "n_dev", "n_test", "n_baseline", "seed", "dtype")
    return ", ".join(f"{k} {c.get(k, results.get(k, 'n/a'))}" for k in keys)


def _meta_lines(results: dict[str, Any]) -> list[str]:
    model = results.get("model") or {}
    versions = results.get("versions") or {}
    summary = _summary(results)
    lines = [
        f"Config: {config_line(results)}",
        f"Model: {model_id(results)} ({model.get('class', 'n/a')}, {plotting.num_layers(results)} layers)",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else "",
        f"Mean best-layer fraction of depth: {fmt(summary.get('mean_best_layer_fraction'))}",
    ]
    timing = results.get("timing") or {}
    if "seconds" in timing:
        lines.append(f"Run time: {fmt(timing['seconds'], 0)} s, peak RSS {fmt(timing.get('peak_rss_mb'), 0)} MB")
    if results.get("created"):
        lines.append(f"Created: {results['created']}")
    return [line for line in lines if line]


def _failure_note(results: dict[str, Any]) -> str:
    failing = failing_tasks(results)
    if not failing:
        return f"The task vector reaches at least {TV_FAIL_RATIO:g} x regular ICL accuracy on every task."
    parts = [
        f"{t} (TV {fmt(accuracy(results['tasks'][t], 'hypothesis'))} vs ICL "
        f"{fmt(accuracy(results['tasks'][t], 'regular'))})"
        for t in failing
    ]
    return f"The task vector fails (test accuracy < {TV_FAIL_RATIO:g} x regular ICL) on: " + "; ".join(parts) + "."


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown_report(results: dict[str, Any]) -> str:
    """The report as Markdown: run details, per-task and category tables, task-vector failures."""
    task_header, task_rows, cat_header, cat_rows = _tables(results)
    lines = [f"# Task vectors: {model_id(results)}", ""]
    lines += [f"- {line}" for line in _meta_lines(results)]
    lines += ["", "Accuracies are on the test sets, with 95% Wilson intervals in brackets.", ""]
    lines += ["## Per task", "", *_md_table(task_header, task_rows), ""]
    lines += ["## Means by category", "", *_md_table(cat_header, cat_rows), ""]
    lines += ["TV/ICL = mean task-vector accuracy / mean regular ICL accuracy.", ""]
    lines += ["## Task-vector failures", "", _failure_note(results), ""]
    if method_report.compares(results):
        lines += ["## Methods compared", "", method_report.NOTE, ""]
        for title, header, rows in method_report.method_tables(results):
            lines += [f"### {title}", "", *_md_table(header, rows), ""]
        top = method_report.heads_lines(results)
        if top:
            lines += ["### Top heads (mean AIE over tasks)", "", ", ".join(top), ""]
    lines += ["Plots (accuracy by layer, per-task bars) are in report.html.", ""]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]], text_cols: int, fail_rows: Collection[int] = ()) -> str:
    """A table; columns from ``text_cols`` on are right-aligned numbers; ``fail_rows`` are highlighted."""
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cells = "".join(("<td class='n'>" if j >= text_cols else "<td>") + e(c) + "</td>" for j, c in enumerate(row))
        out.append(("<tr class='fail'>" if i in fail_rows else "<tr>") + cells + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def html_page(title: str, body: list[str]) -> str:
    """A self-contained HTML page (inline CSS, no external resources)."""
    head = f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>'
    return "\n".join([head, f"<style>{CSS}</style>", "</head>", "<body>", *body, "</body>", "</html>", ""])


def html_figures(plot_pngs: dict[str, bytes]) -> list[str]:
    """``<figure>`` elements with each PNG inlined as a base64 data URI."""
    out = []
    for key, png in plot_pngs.items():
        caption = html.escape(PLOT_TITLES.get(key, key))
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return out


def html_report(results: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page: the Markdown report's tables plus the plots."""
    e = html.escape
    task_header, task_rows, cat_header, cat_rows = _tables(results)
    names = ordered_tasks(results)
    failing = {names.index(t) for t in failing_tasks(results)}
    title = f"Task vectors: {model_id(results)}"
    body = [f"<h1>{e(title)}</h1>", '<ul class="meta">']
    body += [f"<li>{e(line)}</li>" for line in _meta_lines(results)] + ["</ul>"]
    body += ["<p>Accuracies are on the test sets, with 95% Wilson intervals in brackets.</p>"]
    body += ["<h2>Per task</h2>", _html_table(task_header, task_rows, 3, failing)]
    body += ["<h2>Means by category</h2>", _html_table(cat_header, cat_rows, 1)]
    body += ["<p>TV/ICL = mean task-vector accuracy / mean regular ICL accuracy.</p>"]
    body += ["<h2>Task-vector failures</h2>", f"<p>{e(_failure_note(results))}</p>"]
    if method_report.compares(results):
        body += ["<h2>Methods compared</h2>", f"<p>{e(method_report.NOTE)}</p>"]
        for table_title, header, rows in method_report.method_tables(results):
            body += [f"<h3>{e(table_title)}</h3>", _html_table(header, rows, 1)]
        top = method_report.heads_lines(results)
        if top:
            body += ["<h3>Top heads (mean AIE over tasks)</h3>", f"<p>{e(', '.join(top))}</p>"]
    body += ["<h2>Plots</h2>"]
    body += html_figures(plots)
    return html_page(title, body)


def build_plots(results: dict[str, Any]) -> dict[str, bytes]:
    """All plots of one run, keyed as in :data:`PLOT_TITLES`."""
    plots = {
        "bars": plotting.bars_per_task(results),
        "mean_by_layer": plotting.accuracy_by_layer_mean(results),
        "per_task_by_layer": plotting.accuracy_by_layer_per_task(results),
    }
    if method_report.compares(results):
        plots["method_curves"] = method_report.method_layer_curves(results)
        plots["aie_heatmap"] = method_report.aie_heatmap(results)
    return plots


def write_report(out_dir: str | os.PathLike[str], results: dict[str, Any]) -> dict[str, Path]:
    """Build the plots and write ``out_dir/report.md`` and ``out_dir/report.html`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["md"], markdown_report(results))
    atomic_write(paths["html"], html_report(results, build_plots(results)))
    logger.info("wrote %s and %s", paths["md"], paths["html"])
    return paths
