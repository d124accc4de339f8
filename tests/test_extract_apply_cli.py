"""``taskvec extract`` and ``taskvec apply`` end to end on a tiny model saved as a model folder, and their
refusal of bad input (exit code 2, one clear line, no traceback, no output file)."""

from __future__ import annotations

import json
import string

import pytest
from tiny_models import make_tiny_model

import taskvec
from taskvec.cli import main
from taskvec.experiments.extract import ExtractConfig, extract_for_task
from taskvec.tasks.registry import load_task_file

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    lm = make_tiny_model("llama")
    folder = tmp_path_factory.mktemp("tiny-llama-folder")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "upper.csv"
    path.write_text("input,output\n" + "".join(f"{c},{c.upper()}\n" for c in string.ascii_lowercase))
    return path


def test_extract_then_apply(model_dir, demos, tmp_path, capsys):
    out = tmp_path / "upper.safetensors"
    argv = [
        "extract",
        "--model",
        str(model_dir),
        "--demos",
        str(demos),
        "--n-sets",
        "3",
        "--n-dev",
        "6",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    tv = taskvec.TaskVector.load(out)
    meta = tv.metadata
    assert meta["task"] == "upper" and meta["n_sets"] == 3 and len(meta["demonstration_sets"]) == 3
    assert meta["layer_selection"] == "auto" and len(meta["dev_accuracy_by_layer"]) == 3
    assert meta["dev_accuracy"] == max(meta["dev_accuracy_by_layer"]) and len(meta["dev_inputs"]) == 6
    assert meta["model_id"] == str(model_dir) and meta["model_source"]["path"] == str(model_dir.resolve())
    used = {x for s in meta["demonstration_sets"] for x, _ in s} | set(meta["dummy_queries"])
    assert not used & set(meta["dev_inputs"]), "dev pairs must be held out of every demonstration set"
    assert "dev accuracy" in capsys.readouterr().out

    # The same vector from the library (same seed) is bit-identical.
    lm = taskvec.load_model(str(model_dir))
    again = extract_for_task(lm, load_task_file(demos), ExtractConfig(n_sets=3, n_dev=6))
    assert again.vectors.numpy().tobytes() == tv.vectors.numpy().tobytes() and again.layer == tv.layer

    queries = tmp_path / "q.txt"
    queries.write_text("a\n\nb\nzz\n")
    assert main(["apply", str(out), "--queries", str(queries), "--max-new-tokens", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in result["results"]] == ["a", "b", "zz"] and result["layer"] == tv.layer
    assert [r["answer"] for r in result["results"]] == tv.apply(lm, ["a", "b", "zz"], 3)

    assert main(["apply", str(out), "--query", "a", "b", "--alpha", "2", "--layer", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    expected = (2 * tv).apply(lm, ["a", "b"], layer=0)
    assert [line[3:].strip() for line in lines] == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["apply", "{bad}", "--query", "a"], "is not a taskvec safetensors file"),
        (["apply", "{tv}", "--query", "a", "--max-new-tokens", "0"], "max_new_tokens must be in 1..256, got 0"),
        (["apply", "{tv}", "--query", "a", "--max-new-tokens", "999"], "max_new_tokens must be in 1..256, got 999"),
        (["apply", "{tv}", "--query", " "], "query ' ' is empty"),
        (["apply", "{tv}", "--queries", "{empty}"], "holds no queries"),
        (["apply", "{tv}", "--queries", "/no/such/file.txt"], "queries file '/no/such/file.txt' does not exist"),
        (["apply", "/no/such.safetensors", "--query", "a"], "does not exist"),
        (["extract", "--demos", "{few}", "-o", "{out}", "--model", "{model}"], "has 6 usable pairs"),
        (["extract", "--task", "to_upper", "--layer", "mid", "-o", "{out}"], "--layer must be 'auto' or a layer"),
        (["extract", "--task", "to_upper", "--n-sets", "0", "-o", "{out}"], "--n-sets must be at least 1, got 0"),
        (["extract", "--demos", "{demos}", "-o", "{out}", "--model", "{model}", "--layer", "7"], "layer 7 is out of"),
        (["extract", "--task", "to_upper", "-o", "/no/dir/x.safetensors"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(argv, message, model_dir, demos, tmp_path, capsys):
    tv_path = tmp_path / "tv.safetensors"
    taskvec.extract_task_vector(make_tiny_model("llama"), [("a", "A"), ("b", "B")]).save(tv_path)
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "few.json").write_text(json.dumps([{"input": c, "output": c.upper()} for c in "abcdef"]))
    names = {
        "bad": tmp_path / "bad.safetensors", "tv": tv_path, "empty": tmp_path / "empty.txt", "demos": demos,
        "few": tmp_path / "few.json", "out": tmp_path / "out.safetensors", "model": model_dir,
    }  # fmt: skip
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "taskvec: error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_extract_function_vector_then_apply_adds_it(model_dir, demos, tmp_path, capsys):
    """--method fv writes a file that says how it is applied (add) and which heads made it; apply
    adds it at its layer: the same answers as the executor with that Add edit, unlike a replacing patch."""
    import torch

    from taskvec.core.sites import Add, Site
    from taskvec.models.loading import load_model
    from taskvec.runtime import make_executor

    out = tmp_path / "upper-fv.safetensors"
    assert main(["extract", "--model", str(model_dir), "--demos", str(demos), "--method", "fv", "--fv-prompts", "4",
                 "--n-dev", "6", "--shots", "3", "-o", str(out)]) == 0  # fmt: skip
    assert "function vector of" in capsys.readouterr().out
    fv = taskvec.TaskVector.load(out)
    meta = fv.metadata
    assert (fv.method, fv.operation) == ("function_vector", "add")
    assert meta["k"] == len(meta["heads"]) and meta["scale"] > 0 and len(meta["dev_grid"]) > 0
    assert meta["dev_accuracy"] == max(g["dev_accuracy"] for g in meta["dev_grid"])
    assert torch.equal(fv.vectors[0], fv.vectors[-1])  # the same vector at every layer
    assert main(["apply", str(out), "--query", "q", "r", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["method"] == "function_vector" and shown["operation"] == "add"
    lm = load_model(str(model_dir))
    prompts = [f"example:{q}->" for q in "qr"]
    executor = make_executor(lm, "plain", 4)
    added = executor.generate(prompts, 1, [Add(Site(fv.layer), fv.at())] * 2)
    assert [r["answer"] for r in shown["results"]] == added
    assert fv.apply(lm, ["q", "r"]) == added


def test_apply_in_another_template_with_each_decoding(model_dir, demos, tmp_path, capsys):
    """--template writes the queries in other words (a typed \\n is a newline); --decoding and --stop reach the
    decoder: the CLI's answers equal the API's with the same template, mode and stop rule."""
    from taskvec.core.answering import stop_rule
    from taskvec.models.loading import load_model
    from taskvec.prompts import PromptTemplate

    out = tmp_path / "upper.safetensors"
    assert main(["extract", "--model", str(model_dir), "--demos", str(demos), "--n-dev", "4", "-o", str(out)]) == 0
    capsys.readouterr()
    tv = taskvec.TaskVector.load(out)
    lm = load_model(str(model_dir))
    template = PromptTemplate(query="Q: {input}\nA:")
    for mode in ("first", "every_delta"):
        assert main(["apply", str(out), "--query", "q", "r", "--template", "Q: {input}\\nA:", "--decoding", mode,
                     "--max-new-tokens", "3", "--stop", "newline", "--json"]) == 0  # fmt: skip
        shown = json.loads(capsys.readouterr().out)
        assert shown["template"]["query"] == "Q: {input}\nA:" and shown["decoding"] == mode
        api = tv.apply(lm, ["q", "r"], 3, template=template, mode=mode, stop=stop_rule("newline", template))
        assert [r["answer"] for r in shown["results"]] == api
    assert main(["apply", str(out), "--query", "q", "--template", "Q: x A:"]) == 2
    assert "has no {input}" in capsys.readouterr().err
    # --stop demos: the demonstrated answers in the file are single letters (no comma, one token), so every
    # answer has at most 2 tokens and no comma.
    assert main(["apply", str(out), "--query", "q", "r", "--max-new-tokens", "6", "--stop", "demos", "--json"]) == 0
    answers = [r["answer"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert all(len(lm.tokenizer(a, add_special_tokens=False)["input_ids"]) <= 2 and "," not in a for a in answers)


@pytest.mark.parametrize("method", ["icv", "meandiff", "shift"])
def test_extract_every_position_method_then_apply_acts_at_every_position(method, model_dir, demos, tmp_path, capsys):
    """--method icv/meandiff/shift writes a format-4 file with the method, its settings chosen on dev and no
    layer (every layer) or one; apply decodes with the method's edits: the executor's answers with the same
    edits at every position, and ``--alpha`` scales what the method scales (ICV: its strength)."""
    from taskvec.core.methods import edits_at, method_for
    from taskvec.models.loading import load_model
    from taskvec.runtime import make_executor

    out = tmp_path / f"upper-{method}.safetensors"
    assert main(["extract", "--model", str(model_dir), "--demos", str(demos), "--method", method, "--n-dev", "6",
                 "--shots", "3", "-o", str(out)]) == 0  # fmt: skip
    assert "dev accuracy" in capsys.readouterr().out
    vec = taskvec.TaskVector.load(out)
    assert vec.method == {"icv": "in_context_vector", "meandiff": "mean_difference", "shift": "icl_shift"}[method]
    assert vec.layer is None and vec.metadata["dev_accuracy"] == max(g["dev_accuracy"]
                                                                      for g in vec.metadata["dev_grid"])
    assert main(["apply", str(out), "--query", "q", "r", "--max-new-tokens", "3", "--stop", "newline",
                 "--json"]) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert shown["method"] == vec.method and shown["settings"] == vec.settings
    lm = load_model(str(model_dir))
    edits = edits_at(method_for(vec.method, vec.settings), vec.vectors)
    assert {e.site.position for e in edits} == {"all"}
    expected = make_executor(lm, "plain", 4).generate(["example:q->", "example:r->"], 3, [edits] * 2)
    assert [r["answer"] for r in shown["results"]] == expected
    doubled = 2 * vec
    if method == "icv":
        assert doubled.settings["strength"] == 2 * vec.settings["strength"]
        assert torch_equal(doubled.vectors, vec.vectors)
    else:
        assert torch_equal(doubled.vectors, 2 * vec.vectors)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
