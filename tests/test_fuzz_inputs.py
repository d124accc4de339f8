"""Property-based fuzzing of every input taskvec reads: task files, command lines and task-vector files.

Whatever the input, the answer is a usable object or a TaskvecError; through the CLI, exit status 2 and
one line ``taskvec: error: ...`` on stderr, no traceback, and nothing written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiny_models import make_tiny_model

from taskvec.api.patching import apply_task_vector
from taskvec.api.task_vector import TaskVector
from taskvec.cli import main
from taskvec.errors import TaskDataError, TaskvecError
from taskvec.tasks.registry import load_task_file

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_MODEL = "/no/such/model"

# ---------------------------------------------------------------------------------------------- task files
HUGE = "x" * 300_000
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\t", "a\nb", "é", "日本", "👍🏽", "\u200b", "\x00", "<script>alert(1)</script>",
                     "../../etc/passwd", "a,b", '"q"', "\ud800", HUGE]),
)  # fmt: skip
scalars = st.one_of(texts, st.integers(), st.floats(), st.none(), st.booleans())
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))
good_pair = st.fixed_dictionaries({"input": st.text(min_size=1, max_size=8), "output": st.text(min_size=1, max_size=4)})
odd_pair = st.dictionaries(st.sampled_from(["input", "output", "alternatives", "extra"]), values, max_size=4)
pairs = st.lists(st.one_of(good_pair, odd_pair, values), max_size=12)
documents = st.one_of(
    pairs,
    st.fixed_dictionaries(
        {"pairs": st.one_of(pairs, values)},
        optional={"name": values, "category": values, "scoring": values, "description": values},
    ),
    values,
)


def _duplicate(doc):
    return doc + doc[:1] if isinstance(doc, list) else doc


@st.composite
def task_files(draw) -> tuple[str, bytes]:
    """(suffix, file content): well-formed or broken JSON, JSONL and CSV, possibly truncated."""
    suffix = draw(st.sampled_from([".json", ".jsonl", ".csv"]))
    if suffix == ".csv":
        columns = draw(st.lists(st.sampled_from(["input", "output", "alternatives", "x", ""]), max_size=4))
        rows = draw(st.lists(st.lists(texts, min_size=0, max_size=5), max_size=10))
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        text = out.getvalue()
    else:
        doc = draw(documents.map(_duplicate) if draw(st.booleans()) else documents)
        if suffix == ".json":
            text = json.dumps(doc)
        else:
            items = doc if isinstance(doc, list) else [doc]
            text = "\n".join(json.dumps(item) for item in items)
    raw = text.encode("utf-8", "surrogatepass")
    cut = draw(st.one_of(st.none(), st.integers(0, max(0, len(raw)))))
    return suffix, raw if cut is None else raw[:cut]


def check_one_line_exit_2(argv: list[str], capsys, out: Path) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.startswith("taskvec: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not out.exists(), f"files left behind: {list(out.rglob('*'))}"
    return err


@FUZZ
@given(case=task_files())
@example(case=(".json", b"[" * 100_000))
@example(case=(".json", json.dumps({"name": "../../evil", "pairs": [{"input": "a", "output": "b"}]}).encode()))
@example(case=(".csv", b"input,output\n" + b"a" * 200_000 + b",b\n"))
@example(case=(".csv", b"input,output\na\x00,b\n"))
@example(case=(".jsonl", b'{"input": "a", "output": "b"}\n{"input": "a", "output": "c"}\n'))
@example(case=(".json", b"\xef\xbb\xbf" + json.dumps([{"input": "a", "output": "b"}]).encode()))
@example(case=(".json", b"\xff\xfe not utf-8"))
def test_task_files_load_or_fail_clearly(case, capsys):
    suffix, content = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mine{suffix}"
        path.write_bytes(content)
        try:
            task = load_task_file(path)
        except TaskDataError as exc:
            assert str(path) in str(exc)
        else:
            assert task.pairs and isinstance(task.name, str) and task.name.strip()
            assert len({p.input for p in task.pairs}) == len(task.pairs)
            for p in task.pairs:
                assert p.input.strip() and p.output.strip() and "\n" not in p.input + p.output
                p.input.encode("utf-8"), p.output.encode("utf-8")  # no lone surrogates get through
        out = Path(tmp) / "out"  # through the CLI: a bad file, or else the missing model, is one line, exit 2
        check_one_line_exit_2(["run", "--task-file", str(path), "--model", NO_MODEL, "--out", str(out)], capsys, out)


# ------------------------------------------------------------------------------------------- command lines
OPTIONS = ["--tasks", "--task-file", "--shots", "--n-dev", "--n-test", "--n-baseline", "--n-dummy", "--seed",
           "--dtype", "--batch-size", "--task", "--wait", "-v", "--nope", "-x"]  # fmt: skip
tokens = st.one_of(
    st.sampled_from(OPTIONS),
    st.sampled_from(["0", "-1", "1", "5", "1e3", "nan", "", "all", "paper", "to_upper,nope", "float64", "bfloat16"]),
    st.text(max_size=6).filter(lambda t: not t.startswith("-") or t in ("-", "--")),
)


@FUZZ
@given(command=st.sampled_from(["run", "demo", "compare", "tasks", "bogus"]), extra=st.lists(tokens, max_size=6))
@example(command="run", extra=["--shots", "-3"])
@example(command="run", extra=["--tasks", "paper,nope"])
@example(command="run", extra=["--dtype", "float64"])
@example(command="compare", extra=[])
@example(command="run", extra=["--n-dev"])
def test_bad_command_lines_exit_2_with_one_line(command, extra, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show here
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        argv = [command, *extra, "--model", NO_MODEL, "--out", str(out)]
        if command == "tasks" and not extra:
            argv = ["tasks"]
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (0, 2), (argv, err)
        if code == 2:
            assert err.startswith("taskvec: error: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err
        assert not out.exists()
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- task-vector files
def safetensors_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@st.composite
def vector_files(draw) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "shapes", "metadata"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    vectors = torch.randn(3, 32)
    meta: object = {"layer": 1, "format_version": 1, "template": {"query": "example:{input}->"}}
    key = "vectors"
    if kind == "shapes":
        shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]))
        vectors = torch.zeros(shape).to(dtype) if dtype is torch.bool else (torch.randn(shape) * 3).to(dtype)
        if draw(st.booleans()) and vectors.is_floating_point() and vectors.numel():
            vectors.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 1.0]))
        key = draw(st.sampled_from(["vectors", "vectors", "other"]))
    if kind == "metadata":
        meta = draw(st.one_of(values, st.fixed_dictionaries({"layer": values, "template": values})))
    from safetensors.torch import save

    raw_meta = json.dumps(meta) if draw(st.booleans()) or kind != "metadata" else draw(st.text(max_size=20))
    blob = save({key: vectors.contiguous()}, metadata={"taskvec": raw_meta})
    if kind == "truncated":
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    return blob


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama")


@FUZZ
@given(blob=vector_files())
@example(blob=b"")
@example(blob=safetensors_bytes({"vectors": {"dtype": "F32", "shape": [3, 32], "data_offsets": [0, 8]}}, b"\0" * 8))
@example(blob=safetensors_bytes({"vectors": {"dtype": "F32", "shape": [3, 32], "data_offsets": [0, 10**12]}}, b""))
def test_task_vector_files_load_or_fail_clearly(tiny, blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "theta.safetensors"
        path.write_bytes(blob)
        try:
            theta = TaskVector.load(path)
        except TaskvecError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
        assert theta.vectors.dim() == 2 and theta.vectors.dtype == torch.float32
        assert bool(torch.isfinite(theta.vectors).all())
        with contextlib.suppress(TaskvecError):  # a shape of another model is refused, the rest runs
            assert len(apply_task_vector(tiny, theta, ["a", "b"], layer=0)) == 2


def test_saved_task_vector_round_trips_and_the_write_is_atomic(tiny, tmp_path):
    theta = TaskVector(vectors=torch.randn(3, 32), layer=2, metadata={"note": "<é>"})
    theta.save(tmp_path / "t.safetensors")
    back = TaskVector.load(tmp_path / "t.safetensors")
    assert torch.equal(back.vectors, theta.vectors) and back.layer == 2 and back.metadata == {"note": "<é>"}
    assert os.listdir(tmp_path) == ["t.safetensors"]
