"""Cross-model comparison of several `taskvec run` outputs: the paper's model x (BL, TV, ICL, TV/ICL) table."""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskvec.errors import TaskvecError
from taskvec.io.atomic import write_text_atomic as atomic_write
from taskvec.report.plots import layer_curves_overlay, num_layers
from taskvec.report.render import fmt, html_figures, html_page, model_id
from taskvec.stats import summarize

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("taskvec_version", "model", "tasks")
ROW_COLUMNS = ("Model", "Layers", "Tasks", "BL", "TV", "ICL", "TV/ICL", "Best-layer frac.")


def load_results(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``run_dir/results.json`` (``run_dir`` may also be the results file itself).

    Raises :class:`TaskvecError` naming the path when the file is missing, is not JSON, or is not a taskvec
    results file.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / "results.json"
    if not path.is_file():
        raise TaskvecError(f"no results file at {path}: expected the output directory of `taskvec run`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskvecError(f"cannot read results file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise TaskvecError(f"results file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TaskvecError(f"{path} is not a taskvec results file: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise TaskvecError(f"{path} is not a taskvec results file: missing key(s) {', '.join(missing)}")
    tasks = data["tasks"]
    if not isinstance(tasks, dict) or not all(isinstance(v, dict) for v in tasks.values()):
        raise TaskvecError(f"{path} is not a taskvec results file: 'tasks' must map task names to objects")
    if not isinstance(data["model"], dict):
        raise TaskvecError(f"{path} is not a taskvec results file: 'model' must be an object")
    return data


def common_tasks(list_of_results: Sequence[dict[str, Any]]) -> tuple[list[str], bool]:
    """Tasks present in every run (in the first run's order), and whether the runs' task sets differ."""
    if not list_of_results:
        return [], False
    sets = [set(r.get("tasks", {})) for r in list_of_results]
    common = set.intersection(*sets)
    differ = any(s != sets[0] for s in sets)
    return [t for t in list_of_results[0].get("tasks", {}) if t in common], differ


def compare_table(list_of_results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: model, BL / TV / ICL means, TV/ICL, number of tasks and mean best-layer fraction.

    When the runs cover different task sets, every mean is over the tasks common to all runs and each row has
    ``common_tasks_only = True``; ``n_tasks`` is then the number of common tasks and ``n_tasks_run`` the
    run's own count.
    """
    names, differ = common_tasks(list_of_results)
    if differ and not names:
        raise TaskvecError("the runs to compare have no task in common")
    if differ:
        logger.info("runs cover different task sets; comparing over the %d common tasks", len(names))
    rows = []
    for results in list_of_results:
        summary = summarize({t: results["tasks"][t] for t in names})
        mean = summary["mean"]
        rows.append(
            {
                "model": model_id(results),
                "num_layers": num_layers(results),
                "n_tasks": len(names),
                "n_tasks_run": len(results.get("tasks", {})),
                "baseline": mean["baseline"],
                "hypothesis": mean["hypothesis"],
                "regular": mean["regular"],
                "tv_over_icl": mean["tv_over_icl"],
                "mean_best_layer_fraction": summary["mean_best_layer_fraction"],
                "common_tasks_only": differ,
            }
        )
    return rows


#: Run settings that do not change what a task's accuracy means (which model and tasks, how work is
#: batched, which random sample): every other setting of the run's config is part of its protocol.
NOT_PROTOCOL = frozenset({"model", "tasks", "task_files", "batch_size", "seed"})


def protocol_differences(list_of_results: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """{setting: its value in each run} for the protocol settings (shots, split sizes, dtype, ...) that
    differ between the runs; empty when all runs follow the same protocol."""
    configs = [r.get("config") if isinstance(r.get("config"), dict) else {} for r in list_of_results]
    keys = sorted({k for c in configs for k in c} - NOT_PROTOCOL)
    return {k: [c.get(k) for c in configs] for k in keys if any(c.get(k) != configs[0].get(k) for c in configs)}


def _protocol_note(differences: dict[str, list[Any]], labels: Sequence[str]) -> str:
    if not differences:
        return ""
    parts = "; ".join(
        f"{key}: " + ", ".join(f"{v!r} ({label})" for v, label in zip(values, labels, strict=True))
        for key, values in differences.items()
    )
    return f"the runs follow different protocols, so their numbers are not directly comparable ({parts})"


def _labels(list_of_results: Sequence[dict[str, Any]], run_dirs: Sequence[Path]) -> list[str]:
    """Model ids, with the run folder added where two runs share a model id."""
    ids = [model_id(r) for r in list_of_results]
    return [f"{m} ({d.name})" if ids.count(m) > 1 else m for m, d in zip(ids, run_dirs, strict=True)]


def _by_category(list_of_results: Sequence[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    out = []
    for results in list_of_results:
        by_cat = summarize({t: results["tasks"][t] for t in names})["by_category"]
        out.append(by_cat)
    return out


def _cells(row: dict[str, Any], label: str) -> list[str]:
    frac = "n/a" if row["mean_best_layer_fraction"] is None else fmt(row["mean_best_layer_fraction"])
    values = [fmt(row[k]) for k in ("baseline", "hypothesis", "regular", "tv_over_icl")]
    return [label, str(row["num_layers"]), str(row["n_tasks"]), *values, frac]


def _scope_note(rows: list[dict[str, Any]], names: list[str]) -> str:
    if rows and rows[0]["common_tasks_only"]:
        return (
            f"The runs cover different task sets: all means are over the {len(names)} tasks common to every run "
            f"({', '.join(names)})."
        )
    return f"All runs cover the same {len(names)} tasks."


def write_comparison(out_dir: str | os.PathLike[str], run_dirs: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Compare the runs in ``run_dirs``: write comparison.md, comparison.html and comparison.json atomically."""
    if not run_dirs:
        raise TaskvecError("nothing to compare: give at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    all_results = [load_results(d) for d in dirs]
    rows = compare_table(all_results)
    names, differ = common_tasks(all_results)
    labels = _labels(all_results, dirs)
    by_cat = _by_category(all_results, names)
    categories = list(dict.fromkeys(c for b in by_cat for c in b))

    table = [_cells(row, label) for row, label in zip(rows, labels, strict=True)]
    cat_header = ["Model", *[f"{c} (BL/TV/ICL)" for c in categories]]
    cat_table = [
        [label]
        + [
            "/".join(fmt(b[c][k]) for k in ("baseline", "hypothesis", "regular")) if c in b else "n/a"
            for c in categories
        ]
        for label, b in zip(labels, by_cat, strict=True)
    ]
    note = _scope_note(rows, names)
    differences = protocol_differences(all_results)
    protocol_note = _protocol_note(differences, labels)
    if protocol_note:
        logger.warning("%s", protocol_note)
        note = f"Warning: {protocol_note}. {note}"

    md = ["# Task vectors: model comparison", "", note, ""]
    md += ["| " + " | ".join(ROW_COLUMNS) + " |", "|" + "---|" * len(ROW_COLUMNS)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table]
    md += ["", "BL / TV / ICL = Baseline / Task vector / Regular ICL mean test accuracy.", "", "## By category", ""]
    md += ["| " + " | ".join(cat_header) + " |", "|" + "---|" * len(cat_header)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cat_table]
    md += ["", "Runs: " + ", ".join(str(d) for d in dirs), "", "The layer-curve overlay is in comparison.html.", ""]

    e = html.escape

    def html_table(header: Sequence[str], body: list[list[str]]) -> str:
        head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
        trs = ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body]
        return "\n".join(["<table>", head, *trs, "</table>"])

    # The overlay uses the same (common) tasks as the tables.
    overlay = layer_curves_overlay([{**r, "tasks": {t: r["tasks"][t] for t in names}} for r in all_results], labels)
    body = ["<h1>Task vectors: model comparison</h1>", f"<p>{e(note)}</p>", html_table(ROW_COLUMNS, table)]
    body += ["<p>BL / TV / ICL = Baseline / Task vector / Regular ICL mean test accuracy.</p>"]
    body += ["<h2>By category</h2>", html_table(cat_header, cat_table)]
    body += ["<h2>Mean accuracy by fraction of depth</h2>", *html_figures({"overlay": overlay})]
    body += [f"<p class='meta'>Runs: {e(', '.join(str(d) for d in dirs))}</p>"]

    payload = {
        "runs": [str(d) for d in dirs],
        "labels": labels,
        "common_tasks_only": differ,
        "protocol_differences": differences,
        "tasks": names,
        "rows": [{"run": str(d), **row} for d, row in zip(dirs, rows, strict=True)],
        "by_category": {str(d): b for d, b in zip(dirs, by_cat, strict=True)},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "html": out / "comparison.html", "json": out / "comparison.json"}
    atomic_write(paths["md"], "\n".join(md))
    atomic_write(paths["html"], html_page("Task vectors: model comparison", body))
    atomic_write(paths["json"], json.dumps(payload, indent=2) + "\n")
    logger.info("wrote %s, %s and %s", *paths.values())
    return paths
