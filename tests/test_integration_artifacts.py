"""Integration tests of task vectors as artifacts on the real default model (gemma-3-270m): extract ->
save -> load -> apply with multi-token answers, the cached generation against a no-cache reference, and
the CLI. Marked `integration`; about 30 s on a quiet 2-core machine."""

from __future__ import annotations

import json

import pytest
import torch

import taskvec
from taskvec.cli import main
from taskvec.engine.batching import encode
from taskvec.engine.generation import StopRule, generate_ids
from taskvec.experiments.extract import ExtractConfig, extract_for_task
from taskvec.tasks.registry import builtin_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    return taskvec.load_model("gemma-3-270m")


@pytest.fixture(scope="module")
def capitals(gemma):
    return extract_for_task(gemma, builtin_task("country_capital"), ExtractConfig(n_sets=3, n_dev=12, seed=0))


def test_extracted_vector_records_model_and_dev_accuracy(gemma, capitals):
    meta = capitals.metadata
    assert meta["model_source"]["sha256"] == gemma.source["sha256"] and meta["architecture"] == "gemma3_text"
    assert len(meta["dev_accuracy_by_layer"]) == 18 and meta["dev_accuracy"] == max(meta["dev_accuracy_by_layer"])
    # The layer is chosen where the task vector works: well above the zero-shot level of this task (0.02).
    assert 6 <= capitals.layer <= 12 and meta["dev_accuracy"] >= 0.5


def test_saved_vector_answers_multi_token_capitals(gemma, capitals, tmp_path):
    path = tmp_path / "capitals.safetensors"
    capitals.save(path)
    loaded = taskvec.TaskVector.load(path)
    queries = ["France", "Japan", "Canada", "Egypt", "Brazil", "Germany"]
    answers = loaded.apply(gemma, queries, max_new_tokens=6)
    assert answers == capitals.apply(gemma, queries, max_new_tokens=6)
    # Zero-shot, the bare query does not give capitals; with the vector most of these do.
    assert sum(a in {"Paris", "Tokyo", "Ottawa", "Cairo", "Brasília", "Brasilia", "Berlin"} for a in answers) >= 4
    assert all("\n" not in a for a in answers)


def test_cached_generation_equals_full_forwards_on_the_real_model(gemma, capitals):
    prompts = ["example:Peru->", "example:Kenya->", "example:New Zealand->"]
    layer = capitals.layer
    got = generate_ids(gemma, prompts, 4, stop=StopRule(eos=False, stop_strings=(), special=False),
                       patch_layers=[layer] * 3, patch_vectors=capitals.at(layer).expand(3, -1))  # fmt: skip
    for prompt, row in zip(prompts, got):
        ids = encode(gemma, [prompt])[0]
        position = len(ids) - 1

        def hook(module, args, output, position=position):
            hidden = (output[0] if isinstance(output, tuple) else output).clone()
            hidden[:, position] = capitals.at(layer)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = gemma.adapter.layers[layer].register_forward_hook(hook)
        try:
            expected = []
            with torch.no_grad():
                for _ in range(4):
                    logits = gemma.model(input_ids=torch.tensor([ids + expected]), use_cache=False).logits
                    expected.append(int(logits[0, -1].argmax()))
        finally:
            handle.remove()
        assert row == expected


def test_cli_extract_and_apply(tmp_path, capsys):
    out = tmp_path / "upper.safetensors"
    assert main(["extract", "--task", "to_upper", "--layer", "9", "--n-dev", "5", "-o", str(out)]) == 0
    assert "dev accuracy" in capsys.readouterr().out
    assert main(["apply", str(out), "--query", "q", "r", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "gemma-3-270m" and [r["query"] for r in result["results"]] == ["q", "r"]
    assert result["layer"] == taskvec.TaskVector.load(out).layer == 9
