"""TaskVector files (format 4): bit-exact round trip, refusal of damaged or foreign files, version-1 files,
the model check before applying, scaling and averaging."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from tiny_models import make_tiny_model

import taskvec
from taskvec.api.task_vector import FORMAT_VERSION, vectors_sha256
from taskvec.errors import IncompatibleModelError, TaskvecError, TaskVectorFileError

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def tv(llama):
    vector = taskvec.extract_task_vector(llama, DEMOS, ["i", "k"])
    vector.layer = 1
    return vector


def _header(path):
    """(header length, header dict, raw bytes) of a safetensors file."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return size, json.loads(raw[8 : 8 + size]), raw


def _rewrite(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_roundtrip_is_bit_exact_and_records_the_model(llama, tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    loaded = taskvec.TaskVector.load(path)
    assert loaded.vectors.numpy().tobytes() == tv.vectors.float().numpy().tobytes()
    assert loaded.layer == 1 and loaded.metadata == tv.metadata
    meta = loaded.metadata
    assert meta["model_id"] == "tiny-llama" and meta["architecture"] == "llama"
    assert meta["prefix_ids"] == llama.adapter.prefix_ids and meta["taskvec_version"] == taskvec.__version__
    assert meta["dummy_queries"] == ["i", "k"] and len(meta["demonstrations_sha256"]) == 64
    _, header, _ = _header(path)
    stored = json.loads(header["__metadata__"]["taskvec"])
    assert stored["format_version"] == FORMAT_VERSION == 4
    assert (stored["method"], stored["operation"]) == ("task_vector", "replace")
    assert (stored["acts"], stored["position"], stored["settings"]) == ("last", -1, {})
    assert stored["vectors_sha256"] == vectors_sha256(tv.vectors)
    assert (stored["num_layers"], stored["hidden_size"], stored["dtype"]) == (3, 32, "float32")


def test_tampered_vector_bytes_are_refused(tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # flip one bit inside the last float
    path.write_bytes(bytes(raw))
    with pytest.raises(TaskVectorFileError, match=r"sha256 .* does not match .*tampered"):
        taskvec.TaskVector.load(path)


def test_truncated_file_is_refused(tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TaskVectorFileError, match="not a taskvec safetensors file"):
        taskvec.TaskVector.load(path)


def test_edited_metadata_is_refused(tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    size, header, raw = _header(path)
    header["__metadata__"]["taskvec"] = header["__metadata__"]["taskvec"][:-3]  # broken JSON
    _rewrite(path, header, raw[8 + size :])
    with pytest.raises(TaskVectorFileError, match="not valid JSON"):
        taskvec.TaskVector.load(path)


def test_newer_format_version_is_refused(tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    size, header, raw = _header(path)
    meta = json.loads(header["__metadata__"]["taskvec"])
    meta["format_version"] = FORMAT_VERSION + 1
    header["__metadata__"]["taskvec"] = json.dumps(meta)
    _rewrite(path, header, raw[8 + size :])
    with pytest.raises(TaskVectorFileError, match=f"format version {FORMAT_VERSION + 1}"):
        taskvec.TaskVector.load(path)


def test_version_2_file_loads_as_a_replacing_task_vector(llama, tv, tmp_path):
    path = tmp_path / "v2.safetensors"
    tv.save(path)
    size, header, raw = _header(path)
    meta = json.loads(header["__metadata__"]["taskvec"])
    del meta["method"], meta["operation"]
    meta["format_version"] = 2
    header["__metadata__"]["taskvec"] = json.dumps(meta)
    _rewrite(path, header, raw[8 + size :])
    loaded = taskvec.TaskVector.load(path)
    assert (loaded.method, loaded.operation) == ("task_vector", "replace")
    assert loaded.apply(llama, ["x"]) == tv.apply(llama, ["x"])


def test_method_and_operation_must_agree(tv, tmp_path):
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    size, header, raw = _header(path)
    meta = json.loads(header["__metadata__"]["taskvec"])
    meta["operation"] = "add"  # a task vector is never added
    header["__metadata__"]["taskvec"] = json.dumps(meta)
    _rewrite(path, header, raw[8 + size :])
    with pytest.raises(TaskVectorFileError, match="method 'task_vector' with operation 'add'"):
        taskvec.TaskVector.load(path)


def test_version_1_file_still_loads(llama, tv, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v1.safetensors"
    old_meta = {"model_id": "tiny-llama", "template": tv.metadata["template"], "format_version": 1, "layer": 2}
    save_file({"vectors": tv.vectors.contiguous()}, str(path), metadata={"taskvec": json.dumps(old_meta)})
    loaded = taskvec.TaskVector.load(path)
    assert loaded.layer == 2 and torch.equal(loaded.vectors, tv.vectors)
    assert loaded.apply(llama, ["x"]) == tv.apply(llama, ["x"], layer=2)


def test_vector_of_another_model_is_refused_naming_both(tv):
    qwen = make_tiny_model("qwen2")  # same shape (3 layers, hidden 32), another model
    with pytest.raises(IncompatibleModelError, match=r"'tiny-llama' \(architecture llama\).*'tiny-qwen2'"):
        tv.apply(qwen, ["x"])
    with pytest.raises(IncompatibleModelError, match="tiny-llama"):
        taskvec.apply_task_vector(qwen, tv, ["x"])


def test_vector_of_other_weights_is_refused(llama, tv):
    other = taskvec.TaskVector(tv.vectors, 1, dict(tv.metadata, model_source={"sha256": "ab" * 32}))
    llama_with_hash = type(llama)(llama.model, llama.tokenizer, llama.adapter, "tiny-llama", {"sha256": "cd" * 32})
    with pytest.raises(IncompatibleModelError, match=r"sha256 abab.*sha256 cdcd"):
        other.apply(llama_with_hash, ["x"])


def test_scaling(llama, tv):
    doubled = 2 * tv
    assert torch.equal(doubled.vectors, tv.vectors * 2) and torch.equal((tv * 2).vectors, doubled.vectors)
    assert doubled.metadata["alpha"] == 2.0 and (0.5 * doubled).metadata["alpha"] == 1.0
    assert doubled.layer == tv.layer and tv.metadata.get("alpha") is None
    assert (1 * tv).apply(llama, ["x", "y"]) == tv.apply(llama, ["x", "y"])
    with pytest.raises(TaskvecError, match="finite"):
        _ = float("nan") * tv
    with pytest.raises(TypeError):
        _ = "2" * tv


def test_mean_of_vectors(llama, tv):
    other = taskvec.extract_task_vector(llama, DEMOS[::-1], ["m"])
    other.layer = 1
    mean = taskvec.TaskVector.mean([tv, other])
    assert torch.allclose(mean.vectors, (tv.vectors + other.vectors) / 2)
    assert mean.layer == 1 and mean.metadata["mean_of"] == 2
    assert mean.metadata["demonstration_sets"] == [tv.metadata["demonstrations"], other.metadata["demonstrations"]]
    assert mean.metadata["dummy_queries"] == ["i", "k", "m"] and mean.metadata["model_id"] == "tiny-llama"
    assert torch.equal(taskvec.TaskVector.mean([tv]).vectors, tv.vectors)


def test_mean_refuses_mixed_vectors(tv):
    other_layer = taskvec.TaskVector(tv.vectors, 2, tv.metadata)
    with pytest.raises(TaskvecError, match="layers 1 and 2"):
        taskvec.TaskVector.mean([tv, other_layer])
    qwen_tv = taskvec.extract_task_vector(make_tiny_model("qwen2"), DEMOS)
    qwen_tv.layer = 1
    with pytest.raises(TaskvecError, match="different model_id: 'tiny-llama' and 'tiny-qwen2'"):
        taskvec.TaskVector.mean([tv, qwen_tv])
    gemma_tv = taskvec.extract_task_vector(make_tiny_model("gemma3"), DEMOS)
    gemma_tv.layer = 1
    with pytest.raises(TaskvecError, match=r"shapes \(3, 32\) and \(4, 32\)"):
        taskvec.TaskVector.mean([tv, gemma_tv])
    with pytest.raises(TaskvecError, match="non-empty list"):
        taskvec.TaskVector.mean([])
