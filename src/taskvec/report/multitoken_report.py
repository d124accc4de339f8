"""The report of ``taskvec multitoken``: means over tasks of every variant (exact match, token F1), per answer
length, and the task vector in other query templates."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from taskvec.io.atomic import write_text_atomic
from taskvec.report.render import _html_table, _md_table, html_page


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_multitoken(tasks: dict[str, dict]) -> dict:
    """Per answer-length group and variant: mean exact match and token F1 over tasks (and tasks counted);
    per template and group: mean first-token accuracy of the task vector, ICL and zero-shot."""
    variants: dict[str, dict[str, dict[str, list[float]]]] = {}
    templates: dict[str, dict[str, dict[str, list[float]]]] = {}
    for result in tasks.values():
        for group, entry in result["groups"].items():
            for name, scores in entry["variants"].items():
                slot = variants.setdefault(group, {}).setdefault(name, {"exact": [], "f1": []})
                slot["exact"].append(scores["exact"]["accuracy"])
                slot["f1"].append(scores["f1"]["mean"])
        for name, entry in result.get("templates", {}).items():
            for group, by_method in entry["groups"].items():
                for method, scores in by_method.items():
                    templates.setdefault(name, {}).setdefault(group, {}).setdefault(method, []).append(
                        scores["accuracy"]
                    )
    out: dict = {"variants": {}, "templates": {}}
    for group, by_name in variants.items():
        icl = _mean(by_name.get("icl_format", {}).get("exact", []))
        out["variants"][group] = {
            name: {"exact": _mean(s["exact"]), "f1": _mean(s["f1"]), "n_tasks": len(s["exact"]),
                   "exact_over_icl": (_mean(s["exact"]) or 0) / icl if icl else None}
            for name, s in by_name.items()
        }  # fmt: skip
    for name, by_group in templates.items():
        out["templates"][name] = {g: {m: _mean(v) for m, v in by_method.items()} for g, by_method in by_group.items()}
    return out


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    summary = results["summary"]
    out = []
    for group, by_name in sorted(summary["variants"].items()):
        rows = [[name, _f(s["exact"]), _f(s["f1"]), _f(s["exact_over_icl"]), str(s["n_tasks"])]
                for name, s in by_name.items()]  # fmt: skip
        out.append((f"Answers of {group} token(s): mean over tasks", ["Variant", "Exact match", "Token F1",
                                                                      "EM / ICL EM", "Tasks"], rows))  # fmt: skip
    rows = []
    for name, by_group in summary["templates"].items():
        for group, means in sorted(by_group.items()):
            rows.append([name, group, _f(means.get("task_vector")), _f(means.get("function_vector")),
                         _f(means.get("regular")), _f(means.get("zero_shot"))])  # fmt: skip
    if rows:
        heading = "Prompts in other words: first-token accuracy (prefix rule), task vector from the paper's template"
        out.append((heading, ["Query template", "Answer tokens", "Task vector", "Function vector", "ICL", "Zero-shot"],
                    rows))  # fmt: skip
    per_task = []
    for name, result in results["tasks"].items():
        for group, entry in sorted(result["groups"].items()):
            v = entry["variants"]
            per_task.append([name, group, str(result["layer"]), str(v["icl_format"]["exact"]["n"]),
                             *(_f(v[k]["exact"]["accuracy"]) for k in (result["default_variant"], "tv_first_newline",
                                                                       "icl_format", "zero_format"))])  # fmt: skip
    out.append(("Per task (exact match)", ["Task", "Answer tokens", "Layer", "n", "TV (default)", "TV (paper patch, "
                "newline stop)", "ICL", "Zero-shot"], per_task))  # fmt: skip
    return out


def write_multitoken_report(out_dir: str | os.PathLike[str], results: dict[str, Any]) -> dict[str, Path]:
    out = Path(out_dir)
    title = f"Multi-token answers: {results['model']['id']}"
    c = results["config"]
    note = (f"{c['shots']} demonstrations per query, greedy decoding up to {c['max_new_tokens']} tokens; exact match "
            "of the whole answer (or a listed alternative) and token F1; 'format' stops where the template's text "
            "or separator begins, 'newline' at a newline; 'every_delta' adds the task vector's shift at every "
            "generated token; intervals per task are in results.json.")  # fmt: skip
    md = [f"# {title}", "", note, ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(note)}</p>"]
    for heading, header, rows in tables(results):
        md += [f"## {heading}", "", *_md_table(header, rows), ""]
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows, 1)]
    paths = {"md": out / "report.md", "html": out / "report.html"}
    write_text_atomic(paths["md"], "\n".join(md))
    write_text_atomic(paths["html"], html_page(title, body))
    return paths
