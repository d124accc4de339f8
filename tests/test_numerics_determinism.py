"""NaN/inf in hidden states or logits is reported, never scored; the same command gives the same numbers,
also across batch sizes 1, 8 and 32 in float32."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.api.extraction import mean_states
from taskvec.cli import main
from taskvec.engine.forward import predict_token_ids
from taskvec.engine.numerics import check_finite
from taskvec.engine.sweep import sweep_token_ids
from taskvec.errors import NumericalError
from taskvec.experiments import MainConfig, run_main

PROMPTS = ["example:a->", "example:bc->", "example:def->"]


def poisoned(family: str = "llama", dtype: torch.dtype = torch.float32, scale: float | None = None):
    """A copy of a tiny model with its layer-1 MLP output weights set to inf (or all weights scaled)."""
    lm = make_tiny_model(family)
    model = copy.deepcopy(lm.model).to(dtype)
    if scale is None:
        with torch.no_grad():
            model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    else:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(scale)
    return dataclasses.replace(lm, model=model, adapter=type(lm.adapter).from_model(model, lm.tokenizer))


def test_check_finite_counts_and_names_the_dtype():
    assert check_finite(torch.ones(3), "x") is not None
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    with pytest.raises(NumericalError, match=r"logits hold 1 NaN and 2 infinite values of 4 with the model in float16"
                       r".*--dtype float32"):  # fmt: skip
        check_finite(bad, "logits", torch.float16)


def test_inf_weights_are_reported_by_every_path():
    lm = poisoned()
    with pytest.raises(NumericalError, match="hidden states hold"):
        mean_states(lm, [PROMPTS])
    with pytest.raises(NumericalError, match="next-token logits hold"):
        predict_token_ids(lm, PROMPTS)
    with pytest.raises(NumericalError, match=r"(hidden states|logits) hold \d+ NaN"):
        sweep_token_ids(lm, PROMPTS, torch.zeros(len(PROMPTS), lm.num_layers, 32), layers=[0])


def test_float16_overflow_is_reported_with_a_float32_hint():
    lm = poisoned(dtype=torch.float16, scale=1e6)  # embeddings beyond float16's 65504 after the first matmul
    with pytest.raises(NumericalError, match=r"float16.*rerun with --dtype float32"):
        predict_token_ids(lm, PROMPTS)


def test_a_run_on_a_broken_model_stops_with_exit_2_and_no_results(tmp_path, capsys):
    lm = poisoned()
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    argv = ["run", "--model", str(folder), "--tasks", "to_upper", "--n-dev", "4", "--n-test", "3", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "taskvec: error: " in err and "NaN" in err and "Traceback" not in err
    assert not (out / "results.json").exists() and not (out / "tasks").exists()


# ------------------------------------------------------------------------------------------------ determinism
def numbers(out: Path) -> tuple[dict, list[dict]]:
    results = json.loads((out / "results.json").read_text())
    tasks = {name: {k: v for k, v in entry.items() if k != "seconds"} for name, entry in results["tasks"].items()}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"tasks": tasks, "summary": results["summary"]}, rows


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_batch_sizes_1_8_32_give_identical_results(family, tmp_path, single_thread):
    lm = make_tiny_model(family)
    config = MainConfig(model=f"tiny-{family}", tasks=("to_upper", "list_last"), n_dev=10, n_test=10,
                        n_baseline=12, seed=5)  # fmt: skip
    got = {}
    for batch_size in (1, 8, 32):
        run_main(dataclasses.replace(config, batch_size=batch_size), tmp_path / str(batch_size), lm=lm)
        got[batch_size] = numbers(tmp_path / str(batch_size))
    assert got[1] == got[8] == got[32]


def test_the_same_command_twice_gives_identical_numbers(tmp_path, capsys):
    lm = make_tiny_model("qwen2")
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    for name in ("a", "b"):
        argv = ["run", "--model", str(folder), "--tasks", "to_lower,next_letter", "--n-dev", "6", "--n-test", "5",
                "--n-baseline", "7", "--out", str(tmp_path / name)]  # fmt: skip
        assert main(argv) == 0
    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
