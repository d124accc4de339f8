"""llama.cpp control vectors: ``taskvec export --format llama-cpp`` and ``taskvec import`` on a tiny model.

What is checked: the GGUF written for a mean difference (direction.N = what taskvec adds after block N, F32 1-D,
repeng's metadata and taskvec's), the export -> import round trip (same Add edits, same answers), each refusal
(one ``taskvec: error:`` line naming why, exit status 2, no output file, no temporary file left), and the
reader's checks of a foreign file. llama.cpp itself is not run here (bench/bench_llamacpp.py does).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model

import taskvec
from taskvec import cli
from taskvec.api.compat import model_metadata
from taskvec.api.extraction import mean_states
from taskvec.api.patching import vector_edits
from taskvec.cli import main
from taskvec.core.sites import ALL, Add
from taskvec.errors import TaskVectorFileError
from taskvec.io.control_vector import (
    ControlVectorFileError,
    direction_index,
    read_control_vector,
    steerable,
    taskvec_layer,
    write_control_vector,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def keep_one_thread(monkeypatch):
    """`taskvec import` takes --threads (default auto); the tiny model runs best on the one thread set here."""
    monkeypatch.setattr(cli, "configure_threads", lambda value: 1)

HIDDEN = 32
QUERIES = ["a", "q", "m"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tiny = make_tiny_model("llama")  # 3 layers, hidden 32
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm(model_dir):
    return taskvec.load_model(str(model_dir))


def make_vector(lm, method: str, settings: dict | None = None, layer: int | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(lm.num_layers, HIDDEN, generator=generator) * 3
    meta = {**model_metadata(lm), "method": method, "settings": dict(settings or {})}
    return taskvec.TaskVector(vectors=vectors, layer=layer, metadata=meta)


def saved(tv, folder, name="vector.safetensors"):
    path = folder / name
    tv.save(path)
    return taskvec.TaskVector.load(path), path


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def gguf_fields(path):
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, item in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if item.types[0] == gguf.GGUFValueType.STRING:
            out[key] = bytes(item.parts[-1]).decode()
        else:
            out[key] = item.parts[-1].tolist()[0]
    return reader, out


def refused(argv, capsys, *needles):
    """The command exits 2 with one error line that contains every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("taskvec: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_index_convention_is_one_place():
    for layer in range(5):
        assert taskvec_layer(direction_index(layer)) == layer
    assert direction_index(3) == 3  # taskvec layer 3 = the output of block 3 = llama.cpp's direction.3
    assert not steerable(0, 4) and steerable(1, 4) and steerable(3, 4) and not steerable(4, 4)


def test_export_mean_difference_writes_the_added_vectors(lm, tmp_path, capsys):
    tv, path = saved(make_vector(lm, "mean_difference", {"scale": 2.5, "layers": [1, 2]}), tmp_path)
    out = tmp_path / "md.gguf"
    assert main(["export", str(path), "--format", "llama-cpp", "-o", str(out)]) == 0
    assert "direction.1, direction.2" in capsys.readouterr().out
    reader, fields = gguf_fields(out)
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.2"]
    for tensor in reader.tensors:
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and [int(d) for d in tensor.shape] == [HIDDEN]
        layer = taskvec_layer(int(tensor.name.split(".")[1]))
        np.testing.assert_allclose(np.asarray(tensor.data), 2.5 * tv.vectors[layer].numpy(), rtol=0, atol=1e-6)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 2
    assert fields["taskvec.method"] == "mean_difference" and fields["taskvec.approximate"] is False
    assert fields["taskvec.model_id"] == lm.model_id and fields["taskvec.note"].startswith("exact")
    assert files_in(tmp_path) == ["md.gguf", "vector.safetensors"]  # no temporary file left


@pytest.mark.parametrize("method", ["mean_difference", "icl_shift"])
def test_round_trip_gives_the_same_adds_and_answers(lm, model_dir, tmp_path, capsys, method):
    tv = make_vector(lm, method, {"scale": 1.5, "layers": [1, 2]}, seed=1)
    tv.metadata["template"] = {"query": "in {input} out", "separator": "\n", "answer_prefix": " "}
    tv, path = saved(tv, tmp_path)
    out, back = tmp_path / "cv.gguf", tmp_path / "back.safetensors"
    assert main(["export", str(path), "-o", str(out)]) == 0
    assert main(["import", str(out), "-o", str(back), "--model", str(model_dir), "--scale", "1"]) == 0
    assert "layer(s) 1, 2" in capsys.readouterr().out
    imported = taskvec.TaskVector.load(back)
    assert imported.method == "mean_difference" and imported.metadata["template"] == tv.metadata["template"]
    assert imported.metadata["imported_from"]["sha256"] and imported.metadata["model_id"] == str(model_dir)
    original, again = vector_edits(tv), vector_edits(imported)
    assert [(type(e), e.site) for e in again] == [(type(e), e.site) for e in original]
    assert all(isinstance(e, Add) and e.site.position == ALL for e in again)
    for a, b in zip(original, again):
        assert torch.allclose(a.value, b.value, atol=1e-6, rtol=0)
    assert imported.apply(lm, QUERIES, 3) == tv.apply(lm, QUERIES, 3)
    assert imported.apply(lm, QUERIES, 3) != taskvec.TaskVector(torch.zeros_like(tv.vectors), None,
                                                              imported.metadata).apply(lm, QUERIES, 3)  # fmt: skip


def test_import_scale_and_recorded_model(lm, tmp_path, capsys):
    tv, path = saved(make_vector(lm, "mean_difference", {"scale": 1.0, "layers": [2]}), tmp_path)
    out, back = tmp_path / "cv.gguf", tmp_path / "back.safetensors"
    assert main(["export", str(path), "-o", str(out)]) == 0
    assert main(["import", str(out), "-o", str(back), "--scale", "-2"]) == 0  # model: the recorded id
    edits = vector_edits(taskvec.TaskVector.load(back))
    assert len(edits) == 1 and edits[0].site.layer == 2
    assert torch.allclose(edits[0].value, -2 * tv.vectors[2], atol=1e-6)


def test_block_0_needs_skip_block_0(lm, tmp_path, capsys):
    _, path = saved(make_vector(lm, "mean_difference", {"scale": 1.0}), tmp_path)  # every layer, 0 included
    out = tmp_path / "all.gguf"
    refused(["export", str(path), "-o", str(out)], capsys, "layer 0", "cannot steer", "--skip-block-0")
    assert not out.exists()
    assert main(["export", str(path), "-o", str(out), "--skip-block-0"]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed
    cv = read_control_vector(out)
    assert sorted(cv.directions) == [1, 2] and cv.metadata["taskvec.approximate"] is True
    assert "left out" in cv.metadata["taskvec.note"] and cv.metadata["taskvec.skipped_layers"] == "0"


def with_queries(tv, queries=QUERIES):
    tv.metadata.update({"template": {"query": "{input} ->", "separator": "\n", "answer_prefix": " "},
                        "dev_inputs": list(queries[:-1]), "dummy_queries": list(queries[-1:])})  # fmt: skip
    return tv


def test_task_vector_needs_approximate_which_adds_theta_minus_the_mean_query_state(lm, model_dir, tmp_path, capsys):
    tv, path = saved(with_queries(make_vector(lm, "task_vector", layer=1)), tmp_path)
    out = tmp_path / "tv.gguf"
    refused(["export", str(path), "-o", str(out)], capsys, "replaces", "--approximate")
    refused(["export", str(path), "-o", str(out), "--model", str(model_dir)], capsys, "--model", "only with")
    assert files_in(tmp_path) == ["vector.safetensors"]
    assert main(["export", str(path), "-o", str(out), "--approximate", "--model", str(model_dir)]) == 0
    assert "theta - mean(h)" in capsys.readouterr().out
    cv = read_control_vector(out)
    prompts = [f"{q} ->" for q in QUERIES]
    states = mean_states(lm, [[p] for p in prompts], layers=[1], shared_prefix=False)
    expected = tv.vectors[1] - states[:, 0].mean(0)
    assert list(cv.directions) == [direction_index(1)]
    np.testing.assert_allclose(cv.directions[direction_index(1)], expected.numpy(), atol=1e-5, rtol=0)
    assert cv.metadata["taskvec.approximate"] is True and "3 bare query prompts" in cv.metadata["taskvec.note"]


def test_approximate_task_vector_without_queries_or_model_is_refused(lm, tmp_path, capsys):
    tv = make_vector(lm, "task_vector", layer=1)
    _, path = saved(tv, tmp_path)
    refused(["export", str(path), "-o", str(tmp_path / "tv.gguf"), "--approximate"], capsys, "no query inputs")
    tv.metadata.pop("model_id", None)
    _, path = saved(with_queries(tv), tmp_path, "no-model.safetensors")
    refused(["export", str(path), "-o", str(tmp_path / "tv.gguf"), "--approximate"], capsys, "no model id", "--model")
    assert not (tmp_path / "tv.gguf").exists()


def test_function_vector_needs_approximate(lm, tmp_path, capsys):
    tv, path = saved(make_vector(lm, "function_vector", {"applied_scale": 3.0}, layer=1), tmp_path)
    out = tmp_path / "fv.gguf"
    refused(["export", str(path), "-o", str(out)], capsys, "last prompt token", "--approximate")
    assert not out.exists()
    assert main(["export", str(path), "-o", str(out), "--approximate"]) == 0
    assert "APPROXIMATE" in capsys.readouterr().out
    cv = read_control_vector(out)
    assert list(cv.directions) == [direction_index(1)]
    np.testing.assert_allclose(cv.directions[1], 3.0 * tv.vectors[1].numpy(), atol=1e-6, rtol=0)
    assert cv.metadata["taskvec.approximate"] is True and "every position" in cv.metadata["taskvec.note"]


def test_in_context_vector_needs_approximate_and_a_norm(lm, tmp_path, capsys):
    tv, path = saved(make_vector(lm, "in_context_vector", {"strength": 0.2, "layers": [1, 2]}), tmp_path)
    out = tmp_path / "icv.gguf"
    refused(["export", str(path), "-o", str(out)], capsys, "steers", "--approximate")
    refused(["export", str(path), "-o", str(out), "--approximate"], capsys, "no query inputs", "--norm")
    refused(["export", str(path), "-o", str(out), "--approximate", "--norm", "1,2"], capsys, "one per layer")
    refused(["export", str(path), "-o", str(out), "--approximate", "--norm", "nan"], capsys, "positive finite")
    assert not out.exists()
    assert main(["export", str(path), "-o", str(out), "--approximate", "--norm", "5,10,20"]) == 0
    cv = read_control_vector(out)
    for layer, norm in ((1, 10.0), (2, 20.0)):
        unit = tv.vectors[layer] / tv.vectors[layer].norm()
        np.testing.assert_allclose(cv.directions[direction_index(layer)], (0.2 * norm * unit).numpy(), atol=1e-5)
    assert "strength x norm x unit vector" in cv.metadata["taskvec.note"]


def test_in_context_vector_norm_is_measured_on_the_model_without_norm(lm, model_dir, tmp_path, capsys):
    tv, path = saved(with_queries(make_vector(lm, "in_context_vector", {"strength": 0.2, "layers": [1, 2]})), tmp_path)
    out = tmp_path / "icv.gguf"
    assert main(["export", str(path), "-o", str(out), "--approximate", "--model", str(model_dir)]) == 0
    cv = read_control_vector(out)
    prompts = [f"{q} ->" for q in QUERIES]
    states = mean_states(lm, [[p] for p in prompts], shared_prefix=False)  # (3, L, H)
    for layer in (1, 2):
        norm = float(states[:, layer].norm(dim=-1).mean())
        unit = tv.vectors[layer] / tv.vectors[layer].norm()
        np.testing.assert_allclose(cv.directions[direction_index(layer)], (0.2 * norm * unit).numpy(), atol=1e-4)


def write_raw(path, tensors: dict, arch="controlvector"):
    writer = gguf.GGUFWriter(str(path), arch)
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


BAD_FILES = {
    "wrong name": ({"blk.1.attn_q.weight": np.ones(HIDDEN, np.float32)}, "'blk.1.attn_q.weight' is not named"),
    "direction.0": ({"direction.0": np.ones(HIDDEN, np.float32)}, "no direction.0"),
    "not an integer": ({"direction.x": np.ones(HIDDEN, np.float32)}, "'direction.x' is not named"),
    "wrong dtype": ({"direction.1": np.ones(HIDDEN, np.float16)}, "is F16"),
    "two dimensions": ({"direction.1": np.ones((2, HIDDEN), np.float32)}, "expected 1-D"),
    "lengths differ": ({"direction.1": np.ones(HIDDEN, np.float32), "direction.2": np.ones(8, np.float32)}, "length 8"),
    "NaN": ({"direction.1": np.array([0.0, np.nan] * (HIDDEN // 2), np.float32)}, "nan at element 1"),
    "no tensors": ({}, "holds no tensors"),
    "hidden size": ({"direction.1": np.ones(16, np.float32)}, "n_embd 16"),
    "past the last block": ({"direction.3": np.ones(HIDDEN, np.float32)}, "direction.3 is past the last block"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_control_vector_files_are_refused(case, model_dir, tmp_path, capsys):
    tensors, needle = BAD_FILES[case]
    path, out = tmp_path / "bad.gguf", tmp_path / "out.safetensors"
    write_raw(path, tensors)
    refused(["import", str(path), "-o", str(out), "--model", str(model_dir)], capsys, needle)
    assert not out.exists() and files_in(tmp_path) == ["bad.gguf"]


def test_reader_errors_are_file_errors(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf at all\n")
    with pytest.raises(ControlVectorFileError, match="is not a GGUF file"):
        read_control_vector(text)
    with pytest.raises(TaskVectorFileError, match="does not exist"):
        read_control_vector(tmp_path / "missing.gguf")


def test_writer_refuses_what_llama_cpp_would(tmp_path):
    from taskvec.errors import TaskvecError

    for directions, needle in (({0: np.ones(4)}, "direction index 0"), ({1: [np.nan] * 4}, "NaN"),
                               ({1: np.ones(4), 2: np.ones(3)}, "length 3"), ({}, "at least one")):  # fmt: skip
        with pytest.raises(TaskvecError, match=needle):
            write_control_vector(tmp_path / "x.gguf", directions)
    assert files_in(tmp_path) == []


def test_cli_usage_errors(lm, tmp_path, capsys):
    _, path = saved(make_vector(lm, "mean_difference", {"layers": [1]}), tmp_path)
    refused(["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x.gguf")], capsys,
            "does not exist")  # fmt: skip
    refused(["export", str(path), "-o", str(tmp_path / "no" / "x.gguf")], capsys, "output directory")
    refused(["export", str(path), "--format", "onnx", "-o", str(tmp_path / "x.gguf")], capsys, "invalid choice")
    refused(["export", str(path), "-o", str(tmp_path / "x.gguf"), "--norm", "3"], capsys, "only with --approximate")
    refused(["export", str(path), "-o", str(tmp_path / "x.gguf"), "--approximate", "--norm", "3"], capsys,
            "makes no steer edit")  # fmt: skip
    assert files_in(tmp_path) == ["vector.safetensors"]
    refused(["import", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "y.safetensors")], capsys,
            "does not exist")  # fmt: skip
    write_control_vector(tmp_path / "plain.gguf", {1: np.ones(HIDDEN)})  # no taskvec.model_id recorded
    refused(["import", str(tmp_path / "plain.gguf"), "-o", str(tmp_path / "y.safetensors")], capsys, "--model")
    refused(["import", str(tmp_path / "plain.gguf"), "-o", str(tmp_path / "y.safetensors"), "--model", "x",
             "--scale", "inf"], capsys, "--scale")  # fmt: skip
    assert not (tmp_path / "y.safetensors").exists()
