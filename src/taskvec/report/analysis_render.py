"""Reports of the analyses (robustness, conflict, interpret): report.md, a self-contained report.html
and the plots as PNG files. Each report is a list of blocks rendered both ways from one source."""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

from taskvec.io.atomic import write_json_atomic, write_jsonl_atomic, write_text_atomic
from taskvec.io.vector_files import save_vectors
from taskvec.report.analysis_plots import distance_histograms, scatter_by_label
from taskvec.report.render import _html_table, _md_table, fmt, fmt_stats, html_figures, html_page
from taskvec.stats import cosine_distance_matrix

logger = logging.getLogger(__name__)

Block = tuple  # ("h2", text) | ("p", text) | ("table", header, rows, text_cols)


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
    return str(value)


def meta_lines(results: dict[str, Any]) -> list[str]:
    model = results.get("model") or {}
    source = model.get("source") or {}
    sha = source.get("sha256") if isinstance(source, dict) else None
    config = {k: v for k, v in (results.get("config") or {}).items() if k not in ("tasks", "pairs")}
    timing = results.get("timing") or {}
    lines = [
        f"Model: {model.get('id')} ({model.get('class')}, {model.get('num_layers')} layers)"
        + (f", sha256 {sha[:12]}…" if sha else ""),
        "Config: " + ", ".join(f"{k} {_plain(v)}" for k, v in config.items()),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()),
        f"Run time: {fmt(timing.get('seconds'), 0)} s, peak RSS {fmt(timing.get('peak_rss_mb'), 0)} MB",
        f"Created: {results.get('created')}",
    ]
    return lines


def to_markdown(title: str, results: dict[str, Any], blocks: list[Block]) -> str:
    lines = [f"# {title}", "", *(f"- {m}" for m in meta_lines(results)), ""]
    for block in blocks:
        if block[0] == "h2":
            lines += [f"## {block[1]}", ""]
        elif block[0] == "p":
            lines += [block[1], ""]
        else:
            lines += [*_md_table(block[1], block[2]), ""]
    return "\n".join(lines) + "\n"


def to_html(title: str, results: dict[str, Any], blocks: list[Block], plots: dict[str, bytes]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>", '<ul class="meta">', *(f"<li>{e(m)}</li>" for m in meta_lines(results)), "</ul>"]
    for block in blocks:
        if block[0] == "h2":
            body.append(f"<h2>{e(block[1])}</h2>")
        elif block[0] == "p":
            body.append(f"<p>{e(block[1])}</p>")
        else:
            body.append(_html_table(block[1], block[2], block[3]))
    if plots:
        body += ["<h2>Plots</h2>", *html_figures(plots)]
    return html_page(title, body)


def write_analysis(
    out_dir: str | os.PathLike[str], title: str, results: dict[str, Any], blocks: list[Block], plots: dict[str, bytes]
) -> dict[str, Path]:
    """Write results.json, the plots (``<key>.png``), report.md and report.html, each atomically.

    ``plots`` maps a file stem to PNG bytes; the HTML captions come from :data:`PLOT_CAPTIONS`.
    """
    out = Path(out_dir)
    paths = {"json": out / "results.json", "md": out / "report.md", "html": out / "report.html"}
    write_json_atomic(paths["json"], results)
    for stem, png in plots.items():
        write_text_atomic(out / f"{stem}.png", png)
    markdown = to_markdown(title, results, blocks)
    if plots:
        markdown += "Plots: " + ", ".join(f"{stem}.png" for stem in plots) + " (also in report.html).\n"
    write_text_atomic(paths["md"], markdown)
    captions = {PLOT_CAPTIONS.get(stem, stem): png for stem, png in plots.items()}
    write_text_atomic(paths["html"], to_html(title, results, blocks, captions))
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


PLOT_CAPTIONS = {
    "tsne_task": "t-SNE of the task vectors, coloured by task",
    "tsne_category": "t-SNE of the task vectors, coloured by category",
    "pca_task": "PCA of the task vectors, coloured by task",
    "distances": "Cosine distances within a task vs across tasks",
}


def _same_grouping_note(results: dict[str, Any]) -> list[Block]:
    """A note when grouping by category is grouping by task (each task its own category): equal scores."""
    tasks = results.get("tasks") or {}
    categories = [t.get("category") for t in tasks.values()]
    if len(tasks) > 1 and len(set(categories)) == len(categories):
        return [("p", "Each task here is the only one of its category, so grouping by category is the same "
                      "grouping as by task and the two silhouette scores are equal.")]  # fmt: skip
    return []


def robustness_blocks(results: dict[str, Any]) -> list[Block]:
    sil = results.get("silhouette") or {}
    n = (results.get("config") or {}).get("n_vectors")
    blocks: list[Block] = [
        ("p", f"{n} task vectors per task, each from its own demonstrations and dummy queries, at the task's layer."),
        ("h2", "Clustering"),
        (
            "table",
            ["Grouping", "Silhouette score (cosine)"],
            [["by task", fmt(sil.get("task"), 3)], ["by category", fmt(sil.get("category"), 3)]],
            1,
        ),
        ("p", "Silhouette: 1 = tight, well-separated clusters; 0 = overlapping; below 0 = mixed up."),
        *_same_grouping_note(results),
        ("h2", "Cosine distance within a task vs across tasks"),
    ]
    header = ["Task", "Category", "Layer", "Within (mean ± sd)", "Across (mean ± sd)", "Within/across"]
    rows = []
    for name, t in (results.get("tasks") or {}).items():
        rows.append(
            [
                name,
                str(t.get("category")),
                f"{t.get('layer')} ({t.get('source')})",
                f"{fmt(t.get('within_mean'), 3)} ± {fmt(t.get('within_std'), 3)}",
                f"{fmt(t.get('across_mean'), 3)} ± {fmt(t.get('across_std'), 3)}",
                fmt(t.get("ratio"), 2),
            ]
        )
    blocks += [("table", header, rows, 3)]
    return blocks


def conflict_blocks(results: dict[str, Any]) -> list[Block]:
    header = [
        "A (prompt) -> B (theta)",
        "Shared queries",
        "Layer of B",
        "ICL vs A",
        "ICL vs B",
        "Patched vs A",
        "Patched vs B",
        "Paper ICL: A",
        "Paper patched: B",
    ]
    rows = []
    for p in results.get("pairs") or []:
        paper = p.get("paper_llama13b") or {}
        rows.append(
            [
                f"{p['a']} -> {p['b']}",
                str(p.get("n_shared_queries")),
                str(p.get("layer_b")),
                fmt_stats(p.get("icl_vs_a")),
                fmt_stats(p.get("icl_vs_b")),
                fmt_stats(p.get("patched_vs_a")),
                fmt_stats(p.get("patched_vs_b")),
                fmt(paper.get("icl_vs_a")),
                fmt(paper.get("patched_vs_b")),
            ]
        )
    return [
        (
            "p",
            "Task A's full ICL prompt (demonstrations included); 'Patched' replaces the output of block "
            "'Layer of B' at its last position by theta of task B (from B's demonstrations). Accuracy with 95% "
            "Wilson intervals; paper = LLaMA-13B.",
        ),
        ("table", header, rows, 1),
    ]


def _token_list(tokens: list[dict]) -> str:
    return ", ".join((t["token"].strip() or repr(t["token"])) for t in tokens)


def interpret_blocks(results: dict[str, Any]) -> list[Block]:
    config = results.get("config") or {}
    cap = results.get("logit_softcapping")
    blocks: list[Block] = [
        (
            "p",
            f"theta projected through the model's final norm ({results.get('final_norm')}) and unembedding"
            + (f", logits soft-capped at {cap:g}" if cap else "")
            + f"; top {config.get('top_k')} tokens"
            + (" (alphabetic words, de-duplicated)" if config.get("words_only") else "")
            + ".",
        ),
        ("h2", f"Mean theta over {config.get('n_sets')} sets"),
    ]
    mean_rows, single_rows = [], []
    for name, t in (results.get("tasks") or {}).items():
        for layer, found in t["by_layer"].items():
            mean_rows.append([name, layer, _token_list(found["mean"])])
            for i, single in enumerate(found["single"]):
                single_rows.append([name, layer, str(i), _token_list(single)])
    blocks += [("table", ["Task", "Layer", "Top tokens"], mean_rows, 3)]
    if single_rows:
        blocks += [("h2", "Single task vectors"), ("table", ["Task", "Layer", "Vector", "Top tokens"], single_rows, 4)]
    return blocks


def write_robustness(out_dir: str | os.PathLike[str], results: dict[str, Any], vectors, metadata: dict) -> dict:
    """The robustness report, its plots, the 2-D points (points.json: t-SNE and PCA coordinates, task and
    category per row) and the vectors (vectors.safetensors, metadata in its header)."""
    points = results["points"]
    model = (results.get("model") or {}).get("id")
    tsne_axes = ("t-SNE dimension 1", "t-SNE dimension 2")
    pca_axes = tuple(f"PC{i + 1} ({share:.1%} of variance)" for i, share in
                     enumerate(results.get("pca_explained_variance") or [float("nan")] * 2))  # fmt: skip
    plots = {
        "tsne_task": scatter_by_label(points["tsne"], points["task"], f"t-SNE by task ({model})", tsne_axes),
        "tsne_category": scatter_by_label(points["tsne"], points["category"], f"t-SNE by category ({model})",
                                          tsne_axes),
        "pca_task": scatter_by_label(points["pca"], points["task"], f"PCA by task ({model})", pca_axes),
        "distances": distance_histograms(cosine_distance_matrix(vectors.numpy()), points["task"]),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_vectors(out / "vectors.safetensors", vectors, metadata)
    rounded = {k: [[round(x, 4) for x in p] for p in v] if k in ("tsne", "pca") else v for k, v in points.items()}
    write_text_atomic(out / "points.json", json.dumps(rounded, separators=(",", ":")) + "\n")
    summary = {k: v for k, v in results.items() if k != "points"}  # results.json stays small
    paths = write_analysis(out, f"Robustness of task vectors: {model}", summary, robustness_blocks(results), plots)
    return {**paths, "vectors": out / "vectors.safetensors", "points": out / "points.json"}


def write_conflict(out_dir: str | os.PathLike[str], results: dict[str, Any], rows: list[dict]) -> dict:
    """The conflict report and predictions.jsonl (one row per prompt)."""
    model = (results.get("model") or {}).get("id")
    write_jsonl_atomic(Path(out_dir) / "predictions.jsonl", rows)
    paths = write_analysis(out_dir, f"Conflicting tasks: {model}", results, conflict_blocks(results), {})
    return {**paths, "predictions": Path(out_dir) / "predictions.jsonl"}


def write_interpret(out_dir: str | os.PathLike[str], results: dict[str, Any]) -> dict:
    model = (results.get("model") or {}).get("id")
    return write_analysis(out_dir, f"Task vectors on the vocabulary: {model}", results, interpret_blocks(results), {})
