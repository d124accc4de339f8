"""Security: no unsafe deserialization, remote code only on request, data cannot escape the output
directory, and the HTML report escapes every string that came from data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_models import make_tiny_model

from taskvec.experiments import MainConfig, run_main
from taskvec.experiments.outdir import task_result_path
from taskvec.models import dense_cache

SRC = Path(__file__).resolve().parents[1] / "src" / "taskvec"
EVIL = '<script>alert(1)</script> "&" ../../../escaped $\\frac{$ \\'


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_pickle_and_no_unsafe_torch_load():
    for path in source_files():
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.MULTILINE), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_trust_remote_code_is_never_switched_on_by_taskvec():
    for path in source_files():
        assert not re.search(r"trust_remote_code\s*=\s*True", path.read_text()), path


@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "a/b", "..", ".", "", "con", "x" * 300, "a\\b", "é", "<script>", "tasks"]
)
def test_task_result_files_stay_inside_the_output_directory(name, tmp_path):
    path = task_result_path(tmp_path, name)
    assert path.parent == tmp_path / "tasks" and path.name.endswith(".json") and len(path.name) < 100
    assert path.resolve().is_relative_to((tmp_path / "tasks").resolve())


def test_distinct_unsafe_names_get_distinct_files(tmp_path):
    names = ["a/b", "a\\b", "a b", "a?b", "a_b"]
    assert len({task_result_path(tmp_path, n) for n in names}) == len(names)


def test_a_hostile_task_file_cannot_escape_or_inject(tmp_path):
    chars = "<>&\"'ABCDEFGHIJKLMNOPQRST"
    pairs = [{"input": f'<script>{i}&"../{c}', "output": c} for i, c in enumerate(chars)]
    task_file = tmp_path / "evil.json"
    task_file.write_text(json.dumps({"name": EVIL, "description": "<img src=x onerror=alert(2)>", "pairs": pairs}))
    out = tmp_path / "deep" / "out"
    config = MainConfig(model="<b>tiny</b>", tasks=(), task_files=(str(task_file),), n_dev=6, n_test=5, n_baseline=6)
    results = run_main(config, out, lm=make_tiny_model("llama"))
    assert list(results["tasks"]) == [EVIL.strip()]
    # Nothing was written outside the output directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "evil.json"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["out"]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob("*"))
    page = (out / "report.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page and "<b>tiny" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, escaped
    predictions = (out / "predictions.jsonl").read_text().splitlines()
    assert all(json.loads(line)["task"] == EVIL.strip() for line in predictions)


def test_cached_model_files_are_checked_against_their_sha256(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "model.safetensors").write_bytes(b"weights" * 1000)
    (entry / "config.json").write_text("{}")
    dense_cache.write_manifest(entry, {"bundled": "x"})
    manifest = json.loads((entry / dense_cache.MANIFEST).read_text())
    assert set(manifest["sha256"]) == {"model.safetensors", "config.json"}
    assert dense_cache.is_complete(entry)
    weights = entry / "model.safetensors"
    weights.write_bytes(b"weightz" + b"weights" * 999)  # same size, other bytes (and a new mtime)
    assert not dense_cache.is_complete(entry)
    weights.write_bytes(b"weights" * 1000)  # restored: the hash matches again, whatever the mtime
    assert dense_cache.is_complete(entry)
    weights.write_bytes(b"weights" * 999)  # truncated
    assert not dense_cache.is_complete(entry)
    (entry / dense_cache.MANIFEST).write_text('{"file_sizes": [1, 2]}')  # a damaged manifest
    assert not dense_cache.is_complete(entry)
