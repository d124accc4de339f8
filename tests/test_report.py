"""The report package: Markdown/HTML reports, plots and the cross-model comparison, on synthetic results."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from taskvec.errors import TaskvecError
from taskvec.report import compare_table, load_results, write_comparison, write_report
from taskvec.report import render as render_mod
from taskvec.report.plots import (
    accuracy_by_layer_mean,
    accuracy_by_layer_per_task,
    bars_figure,
    bars_per_task,
    layer_curves_overlay,
    ordered_tasks,
)
from taskvec.report.render import html_report, markdown_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# name -> (category, baseline, task vector, regular ICL, best layer); the dict order interleaves categories.
SPEC: dict[str, tuple[str, float, float, float, int]] = {
    "to_upper": ("algorithmic", 0.02, 0.84, 0.96, 3),
    "en_fr": ("translation", 0.10, 0.30, 0.80, 2),
    "next_letter": ("algorithmic", 0.04, 0.70, 0.90, 2),
    "a<b & c": ("translation", 0.20, 0.60, 0.70, 4),
}
NUM_LAYERS = 6


def wilson_like(acc: float) -> list[float]:
    """A fake but well-formed interval around ``acc``."""
    return [round(max(0.0, acc - 0.13), 4), round(min(1.0, acc + 0.08), 4)]


def make_results(
    spec: dict[str, tuple[str, float, float, float, int]] = SPEC,
    model_id: str = "tiny-model",
    num_layers: int = NUM_LAYERS,
) -> dict[str, Any]:
    """A schema-valid results dict (docs/results-format.md) with summary computed by hand."""
    tasks = {}
    for name, (category, bl, tv, icl, best) in spec.items():
        curve = [round(tv * (1 - abs(layer - best) / num_layers), 4) for layer in range(num_layers)]
        tasks[name] = {
            "category": category,
            "description": f"synthetic {name}",
            "n_pairs": 30,
            "n_usable": 26,
            "answer_prefix": " ",
            "regular": {"accuracy": icl, "ci95": wilson_like(icl), "n": 50},
            "hypothesis": {"accuracy": tv, "ci95": wilson_like(tv), "n": 50},
            "baseline": {"accuracy": bl, "ci95": wilson_like(bl), "n": 100},
            "best_layer": best,
            "best_layer_fraction": round(best / num_layers, 3),
            "dev_accuracy_by_layer": curve,
            "seconds": 1.0,
        }

    def means(names: list[str]) -> dict[str, Any]:
        m = {k: sum(tasks[t][k]["accuracy"] for t in names) / len(names) for k in ("regular", "hypothesis", "baseline")}
        return {**m, "tv_over_icl": m["hypothesis"] / m["regular"], "n_tasks": len(names)}

    categories = sorted({t["category"] for t in tasks.values()})
    config = {
        "model": model_id,
        "tasks": list(tasks),
        "shots": 5,
        "n_dev": 50,
        "n_test": 50,
        "n_baseline": 100,
        "n_dummy": 2,
        "seed": 41,
        "dtype": "float32",
        "template": {"query": "example:{input}->", "separator": "\n", "answer_prefix": ""},
    }
    return {
        "taskvec_version": "0.1.0",
        "created": "2026-11-22T03:30:00+00:00",
        "seed": 41,
        "config": config,
        "model": {
            "id": model_id,
            "class": "TinyForCausalLM",
            "model_type": "tiny",
            "num_layers": num_layers,
            "source": {"bundled": model_id, "sha256": "00"},
        },
        "versions": {"taskvec": "0.1.0", "python": "3.11.7"},
        "tasks": tasks,
        "summary": {
            "mean": means(list(tasks)),
            "by_category": {c: means([t for t in tasks if tasks[t]["category"] == c]) for c in categories},
            "mean_best_layer_fraction": sum(t["best_layer_fraction"] for t in tasks.values()) / len(tasks),
        },
        "timing": {"seconds": 12.0, "peak_rss_mb": 300.0},
    }


@pytest.fixture
def results() -> dict[str, Any]:
    return make_results()


def test_tasks_are_grouped_by_category_in_paper_order(results):
    assert ordered_tasks(results) == ["to_upper", "next_letter", "en_fr", "a<b & c"]


def test_markdown_has_every_task_row_with_formatted_numbers(results):
    md = markdown_report(results)
    assert md.startswith("# Task vectors: tiny-model")
    assert "shots 5, n_dev 50, n_test 50, n_baseline 100, seed 41, dtype float32" in md
    assert (
        "| to_upper | algorithmic | 26/30 | 0.02 [0.00, 0.10] | 0.84 [0.71, 0.92] | 0.96 [0.83, 1.00] | 3 (0.50) |"
        in md
    )
    assert (
        "| en_fr | translation | 26/30 | 0.10 [0.00, 0.18] | 0.30 [0.17, 0.38] | 0.80 [0.67, 0.88] | 2 (0.33) |" in md
    )
    for name in SPEC:
        assert re.search(rf"^\| {re.escape(name)} \|", md, flags=re.MULTILINE), name
    # Category means: algorithmic BL (0.02+0.04)/2, TV (0.84+0.70)/2, ICL (0.96+0.90)/2, TV/ICL 0.77/0.93.
    assert "| algorithmic | 2 | 0.03 | 0.77 | 0.93 | 0.83 |" in md
    assert "| translation | 2 | 0.15 | 0.45 | 0.75 | 0.60 |" in md
    # All tasks: BL 0.09, TV 2.44/4 = 0.61, ICL 3.36/4 = 0.84, TV/ICL 0.726.
    assert "| all tasks | 4 | 0.09 | 0.61 | 0.84 | 0.73 |" in md
    # Only en_fr has TV < 0.5 * ICL (0.30 < 0.40); a<b has 0.60 >= 0.35.
    failures = md.split("## Task-vector failures", 1)[1]
    assert "en_fr (TV 0.30 vs ICL 0.80)" in failures
    assert "to_upper" not in failures and "a<b" not in failures
    assert "report.html" in md and "data:image" not in md


def test_markdown_without_failures_says_so(results):
    del results["tasks"]["en_fr"]
    assert "at least 0.5 x regular ICL accuracy on every task" in markdown_report(results)


def test_html_is_self_contained_and_escaped(results):
    page = html_report(results, render_mod.build_plots(results))
    assert "http://" not in page and "https://" not in page
    assert 'src="file' not in page and "<script" not in page and "<link" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for src in srcs:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "a&lt;b &amp; c" in page and "a<b" not in page
    assert "0.84 [0.71, 0.92]" in page and "<tr class='fail'><td>en_fr</td>" in page
    assert len(page) < 3_000_000


def test_bars_tick_labels_are_the_task_names_under_their_own_groups(results):
    fig = bars_figure(results)
    ax = fig.axes[0]
    names = ordered_tasks(results)
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    # Each tick sits at the centre of its task's three bars (baseline, task vector, regular).
    bars = [p for p in ax.patches if p.get_width() < 0.5]
    assert len(bars) == 3 * len(names)
    ticks = list(ax.get_xticks())
    for i, name in enumerate(names):
        group = [bars[k * len(names) + i] for k in range(3)]
        centre = sum(b.get_x() + b.get_width() / 2 for b in group) / 3
        assert ticks[i] == pytest.approx(centre), name
        heights = [b.get_height() for b in group]
        bl, tv, icl = SPEC[name][1:4]
        assert heights == pytest.approx([bl, tv, icl]), name
    # Labels anchored at their right end with the rotation, so the text ends under its own tick.
    assert all(t.get_ha() == "right" and t.get_rotation_mode() == "anchor" for t in ax.get_xticklabels())


def test_all_plots_are_png(results):
    other = make_results(model_id="other", num_layers=10)
    for png in (
        accuracy_by_layer_per_task(results),
        accuracy_by_layer_mean(results),
        bars_per_task(results),
        layer_curves_overlay([results, other]),
    ):
        assert png.startswith(PNG_MAGIC) and len(png) < 1_000_000
    empty = {**results, "tasks": {}}
    assert accuracy_by_layer_per_task(empty).startswith(PNG_MAGIC)
    assert bars_per_task(empty).startswith(PNG_MAGIC)


def test_write_report_writes_both_files_and_no_temp_files(results, tmp_path):
    out = tmp_path / "run"
    paths = write_report(out, results)
    assert sorted(os.listdir(out)) == ["report.html", "report.md"]
    assert paths["md"].read_text(encoding="utf-8") == markdown_report(results)
    assert "data:image/png;base64," in paths["html"].read_text(encoding="utf-8")


def test_atomic_write_keeps_old_file_and_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old", encoding="utf-8")

    def boom(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(render_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render_mod.atomic_write(target, "new")
    assert os.listdir(tmp_path) == ["report.md"]
    assert target.read_text(encoding="utf-8") == "old"


def _two_runs() -> tuple[dict[str, Any], dict[str, Any]]:
    a = make_results(
        {
            "t1": ("algorithmic", 0.10, 0.50, 0.90, 1),
            "t2": ("algorithmic", 0.20, 0.60, 0.80, 2),
            "t3": ("knowledge", 0.00, 0.40, 0.60, 3),
        },
        model_id="model-a",
        num_layers=6,
    )
    b = make_results(
        {
            "t3": ("knowledge", 0.10, 0.20, 0.40, 4),
            "t2": ("algorithmic", 0.30, 0.80, 1.00, 2),
            "t4": ("knowledge", 0.50, 0.50, 0.50, 0),
        },
        model_id="model-b",
        num_layers=8,
    )
    return a, b


def test_compare_table_uses_common_tasks_when_task_sets_differ():
    a, b = _two_runs()
    row_a, row_b = compare_table([a, b])
    assert row_a["common_tasks_only"] is True and row_b["common_tasks_only"] is True
    assert (row_a["n_tasks"], row_a["n_tasks_run"], row_a["num_layers"]) == (2, 3, 6)
    assert (row_b["model"], row_b["n_tasks"], row_b["num_layers"]) == ("model-b", 2, 8)
    # Over t2 and t3 only.
    assert row_a["baseline"] == pytest.approx(0.10)
    assert row_a["hypothesis"] == pytest.approx(0.50)
    assert row_a["regular"] == pytest.approx(0.70)
    assert row_a["tv_over_icl"] == pytest.approx(0.50 / 0.70)
    assert row_a["mean_best_layer_fraction"] == pytest.approx((0.333 + 0.5) / 2)
    assert row_b["baseline"] == pytest.approx(0.20)
    assert row_b["hypothesis"] == pytest.approx(0.50)
    assert row_b["regular"] == pytest.approx(0.70)
    assert row_b["mean_best_layer_fraction"] == pytest.approx((0.5 + 0.25) / 2)


def test_compare_table_same_tasks_matches_summary(results):
    rows = compare_table([results, make_results(model_id="other")])
    assert [r["common_tasks_only"] for r in rows] == [False, False]
    mean = results["summary"]["mean"]
    for key in ("baseline", "hypothesis", "regular", "tv_over_icl"):
        assert rows[0][key] == pytest.approx(mean[key])
    assert rows[0]["n_tasks"] == 4


def test_compare_table_without_common_tasks_fails():
    a = make_results({"t1": ("algorithmic", 0.1, 0.5, 0.9, 1)})
    b = make_results({"t2": ("algorithmic", 0.1, 0.5, 0.9, 1)})
    with pytest.raises(TaskvecError, match="no task in common"):
        compare_table([a, b])


def _write_run(path: Path, results: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return path


def test_load_results_roundtrip_and_errors(tmp_path, results):
    run = _write_run(tmp_path / "ok", results)
    assert load_results(run) == results
    assert load_results(run / "results.json") == results

    missing = tmp_path / "missing"
    with pytest.raises(TaskvecError, match=re.escape(str(missing / "results.json"))):
        load_results(missing)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TaskvecError, match=r"bad.results\.json is not valid JSON"):
        load_results(bad)

    (bad / "results.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TaskvecError, match="not a taskvec results file"):
        load_results(bad)

    (bad / "results.json").write_text(json.dumps({"model": {}, "tasks": {}}), encoding="utf-8")
    with pytest.raises(TaskvecError, match=r"missing key.*taskvec_version"):
        load_results(bad)


def test_write_comparison(tmp_path):
    a, b = _two_runs()
    dirs = [_write_run(tmp_path / "run-a", a), _write_run(tmp_path / "run-b", b)]
    out = tmp_path / "cmp"
    paths = write_comparison(out, dirs)
    assert sorted(os.listdir(out)) == ["comparison.html", "comparison.json", "comparison.md"]
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["common_tasks_only"] is True and data["tasks"] == ["t2", "t3"]
    assert data["rows"][0]["regular"] == pytest.approx(0.70)
    md = paths["md"].read_text(encoding="utf-8")
    assert "2 tasks common to every run (t2, t3)" in md
    assert "| model-a | 6 | 2 | 0.10 | 0.50 | 0.70 | 0.71 | 0.42 |" in md
    page = paths["html"].read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "http" not in page
