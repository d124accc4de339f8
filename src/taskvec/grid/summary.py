"""``taskvec grid-summary``: every finished run of a grid in one table (csv, md, html) and one plot.

``summary.csv`` has one row per (model, seed, shots, task); ``summary.md``/``.html`` show the mean over
tasks and seeds per (model, shots) with the spread across seeds, then one line per run, then the jobs not
finished yet; ``summary.png`` plots accuracy against the number of shots per model.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from pathlib import Path
from typing import Any

from taskvec.errors import TaskvecError
from taskvec.grid.execute import JOBS_FILE
from taskvec.io.atomic import write_text_atomic
from taskvec.report.compare import load_results
from taskvec.report.render import fmt, html_figures, html_page

METHODS = ("baseline", "hypothesis", "regular")
CSV_COLUMNS = ("model", "seed", "shots", "task", "category", "baseline", "hypothesis", "regular", "best_layer",
               "best_layer_fraction", "run_dir")  # fmt: skip


def collect(grid_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per run and task) of every finished run under ``grid_dir``, and the unfinished jobs."""
    grid_dir = Path(grid_dir)
    if not (grid_dir / "runs").is_dir():
        raise TaskvecError(
            f"{str(grid_dir)!r} holds no grid runs (no runs/ folder): expected the --out of `taskvec grid`"
        )
    rows = []
    finished = set()
    for path in sorted((grid_dir / "runs").glob("*/*/results.json")):
        results = load_results(path)
        config, run_dir = results.get("config", {}), str(path.parent.relative_to(grid_dir))
        finished.add(run_dir)
        for task, entry in results["tasks"].items():
            rows.append({"model": config.get("model", results["model"].get("id")), "seed": config.get("seed"),
                         "shots": config.get("shots"), "task": task, "category": entry.get("category"),
                         **{m: entry[m]["accuracy"] for m in METHODS}, "best_layer": entry.get("best_layer"),
                         "best_layer_fraction": entry.get("best_layer_fraction"), "run_dir": run_dir})  # fmt: skip
    unfinished = []
    jobs_file = grid_dir / JOBS_FILE
    if jobs_file.is_file():
        unfinished = [j["name"] for j in json.loads(jobs_file.read_text())["jobs"] if j["run_dir"] not in finished]
    return rows, unfinished


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, shots): mean over tasks of each run, then mean and sd of those over seeds."""
    runs: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        runs.setdefault((row["model"], row["shots"]), {}).setdefault(row["seed"], []).append(row)
    table = []
    for (model, shots), by_seed in runs.items():
        per_seed = {m: [statistics.fmean(r[m] for r in task_rows) for task_rows in by_seed.values()] for m in METHODS}
        entry = {"model": model, "shots": shots, "seeds": len(by_seed),
                 "tasks": len({r["task"] for task_rows in by_seed.values() for r in task_rows})}  # fmt: skip
        for m in METHODS:
            entry[m] = statistics.fmean(per_seed[m])
            entry[f"{m}_sd"] = statistics.stdev(per_seed[m]) if len(per_seed[m]) > 1 else None
        entry["tv_over_icl"] = entry["hypothesis"] / entry["regular"] if entry["regular"] else None
        table.append(entry)
    return sorted(table, key=lambda e: (e["model"], e["shots"]))


def _runs_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    runs: dict[str, list[dict]] = {}
    for row in rows:
        runs.setdefault(row["run_dir"], []).append(row)
    return [[r[0]["model"], str(r[0]["seed"]), str(r[0]["shots"]), str(len(r)),
             *(fmt(statistics.fmean(x[m] for x in r)) for m in METHODS)] for r in runs.values()]  # fmt: skip


def _with_sd(entry: dict[str, Any], method: str) -> str:
    sd = entry[f"{method}_sd"]
    return fmt(entry[method]) + (f" ± {fmt(sd)}" if sd is not None else "")


def tables(rows: list[dict[str, Any]], unfinished: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the summary's tables."""
    agg = [[e["model"], str(e["shots"]), str(e["seeds"]), str(e["tasks"]), *(_with_sd(e, m) for m in METHODS),
            fmt(e["tv_over_icl"])] for e in aggregate(rows)]  # fmt: skip
    out = [("Mean over tasks and seeds (± sd across seeds)",
            ["Model", "Shots", "Seeds", "Tasks", "BL", "TV", "ICL", "TV/ICL"], agg),
           ("Runs", ["Model", "Seed", "Shots", "Tasks", "BL", "TV", "ICL"], _runs_table(rows))]  # fmt: skip
    if unfinished:
        out.append(("Unfinished jobs (rerun `taskvec grid` to resume them)", ["Job"], [[j] for j in unfinished]))
    return out


def shots_plot(rows: list[dict[str, Any]]) -> bytes:
    """Mean accuracy against shots, one colour per model; task vector solid, ICL dashed, baseline dotted."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    agg = aggregate(rows)
    styles = {"hypothesis": ("-", "task vector"), "regular": ("--", "regular ICL"), "baseline": (":", "baseline")}
    for i, model in enumerate(sorted({e["model"] for e in agg})):
        points = [e for e in agg if e["model"] == model]
        shots = [e["shots"] for e in points]
        for method, (style, label) in styles.items():
            errors = [e[f"{method}_sd"] or 0 for e in points]
            ax.errorbar(shots, [e[method] for e in points], yerr=errors, linestyle=style, marker="o", capsize=3,
                        color=f"C{i}", label=f"{model}: {label}")  # fmt: skip
    ax.set_xlabel("shots (demonstrations per prompt)")
    ax.set_ylabel("mean test accuracy over tasks")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_summary(grid_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write summary.csv, summary.md, summary.html and summary.png into ``out_dir`` (default: ``grid_dir``)."""
    rows, unfinished = collect(grid_dir)
    if not rows:
        raise TaskvecError(f"no finished runs under {str(grid_dir)!r} yet ({len(unfinished)} job(s) unfinished)")
    out = Path(out_dir) if out_dir else Path(grid_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {kind: out / f"summary.{kind}" for kind in ("csv", "md", "html", "png")}
    png = shots_plot(rows)
    md = ["# Grid summary", ""]
    body = ["<h1>Grid summary</h1>"]
    for title, header, table_rows in tables(rows, unfinished):
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in table_rows] + [""]
        cells = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in r)}</tr>" for r in table_rows)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{cells}</table>")
    md.append("![accuracy by shots](summary.png)")
    body += html_figures({"Accuracy by number of shots": png})
    write_text_atomic(paths["csv"], buffer.getvalue())
    write_text_atomic(paths["md"], "\n".join(md) + "\n")
    write_text_atomic(paths["html"], html_page("taskvec grid summary", body))
    write_text_atomic(paths["png"], png)
    return paths
