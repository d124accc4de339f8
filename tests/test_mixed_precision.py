"""Mixed precision (bf16 products in the decoder blocks) and the float32 recheck of its close calls."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.engine.batching import collate, encode
from taskvec.engine.close_calls import check_recheck_margin
from taskvec.engine.forward import next_token_logits, predict_ids, predict_token_ids
from taskvec.errors import TaskvecError
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.models.precision import MixedLinear, enable_mixed_precision, exact_products, is_mixed
from taskvec.runtime.fast import FastExecutor
from taskvec.tasks import builtin_task, prepare_task

PROMPTS = ["example:abc->", "example:hello->", "example:x->", "example:tree->", "example:b->"]
LINEAR_FAMILIES = ["llama", "qwen2", "gemma3", "gpt_neox", "gptj"]  # gpt2 uses Conv1D: left as it is


def mixed_copy(family: str):
    plain = make_tiny_model(family)
    mixed = copy.deepcopy(plain)
    assert enable_mixed_precision(mixed.adapter.layers) > 0
    return plain, mixed


@pytest.mark.parametrize("family", LINEAR_FAMILIES)
def test_exact_products_equal_the_float32_model_bit_for_bit(family):
    plain, mixed = mixed_copy(family)
    batch = collate(plain, encode(plain, PROMPTS))
    expected = next_token_logits(plain, batch)
    with exact_products(mixed.model):
        assert torch.equal(next_token_logits(mixed, batch), expected)
    approx = next_token_logits(mixed, batch)  # bf16 products: close, not equal
    assert not torch.equal(approx, expected)
    assert float((approx - expected).abs().max()) < 0.05 * float(expected.abs().max())
    assert not any(m.exact for m in mixed.model.modules() if isinstance(m, MixedLinear))  # switched back


@pytest.mark.parametrize("family", LINEAR_FAMILIES)
def test_weights_and_state_dict_are_unchanged(family):
    plain, mixed = mixed_copy(family)
    assert is_mixed(mixed.model) and not is_mixed(plain.model)
    assert mixed.precision == "mixed" and plain.precision == "float32"
    a, b = plain.model.state_dict(), mixed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt2_conv1d_blocks_are_not_converted():
    lm = copy.deepcopy(make_tiny_model("gpt2"))
    assert enable_mixed_precision(lm.adapter.layers) == 0
    assert lm.precision == "float32"


def test_fast_executor_recomputes_exactly_the_close_calls():
    plain, mixed = mixed_copy("llama")
    expected = predict_token_ids(plain, PROMPTS)
    ids, margins = predict_ids(mixed, PROMPTS, with_margins=True)
    assert margins is not None and margins.shape == ids.shape
    executor = FastExecutor(mixed, batch_size=2, recheck_margin=0.1)
    wrong = ids.clone()
    wrong[:] = (expected + 1) % 50  # every answer wrong: only the rechecked ones get repaired
    margins = torch.tensor([0.0, 1.0, 0.05, 2.0, float("nan")])
    done = executor._recheck(PROMPTS, wrong, margins, None, None)
    assert done.mask.tolist() == [True, False, True, False, False]
    assert torch.equal(wrong[done.mask], expected[done.mask])
    assert torch.equal(wrong[~done.mask], ((expected + 1) % 50)[~done.mask])
    assert done.changed == 2
    assert FastExecutor(plain).predict(PROMPTS).rechecked is None  # float32: nothing to recheck
    assert FastExecutor(mixed, recheck_margin=None).predict(PROMPTS).rechecked is None


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_protocol_test_predictions_match_float32(family):
    """With the widest margin many test predictions of a random model (flat logits) are close calls; the
    task vector, ICL and baseline rows equal the float32 run's; with margin 0 none is rechecked."""
    plain, mixed = mixed_copy(family)
    prepared = prepare_task(plain, builtin_task("to_upper"))
    config = MainConfig(model="tiny", n_dev=6, n_test=5, n_baseline=6, seed=3, batch_size=4)
    fp32, fp32_rows = evaluate_task(plain, prepared, config)
    checked, checked_rows = evaluate_task(mixed, prepared, MainConfig(**{**config.__dict__, "recheck_margin": 0.5}))
    assert "close_calls" not in fp32 and "rechecked" not in fp32_rows[0]
    calls = checked["close_calls"]
    assert calls["margin"] == 0.5 and set(calls) == {"margin", "hypothesis", "regular", "baseline"}
    test_rows = [(a, b) for a, b in zip(fp32_rows, checked_rows) if a["split"] == "test"]
    assert sum(b["rechecked"] for _, b in test_rows) >= len(test_rows) // 4
    same_layer = checked["best_layer"] == fp32["best_layer"]
    for a, b in test_rows:
        if a["method"] != "hypothesis" or same_layer:
            assert a["prediction"] == b["prediction"], (a, b)
    unchecked, unchecked_rows = evaluate_task(mixed, prepared, MainConfig(**{**config.__dict__, "recheck_margin": 0}))
    assert all(v["rechecked"] == 0 for k, v in unchecked["close_calls"].items() if k != "margin")
    assert not any(r.get("rechecked") for r in unchecked_rows)


def test_recheck_margin_is_checked_and_only_recorded_for_mixed():
    assert check_recheck_margin(0.1) == 0.1
    for bad in (-0.1, 0.6, float("nan")):
        with pytest.raises(TaskvecError, match="recheck margin"):
            check_recheck_margin(bad)
    assert "recheck_margin" not in MainConfig().to_dict()  # float32 runs keep their old configuration
    assert MainConfig(dtype="mixed").to_dict()["recheck_margin"] == 0.1


def test_cli_refuses_a_bad_recheck_margin(tmp_path, capsys):
    from taskvec.cli import main

    status = main(["run", "--dtype", "mixed", "--recheck-margin", "3", "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recheck margin 3.0" in err[0]
    assert not (tmp_path / "out").exists()


def test_last_token_variants_rechecked_like_predict():
    """Under mixed precision the fast executor's last-token variants recompute close calls in float32, as its
    predict does: with the widest margin both give the float32 model's answers (bf16 products alone change
    some of them on this model)."""
    from taskvec.core.sites import Add, PerPrompt, Site

    plain, mixed = mixed_copy("llama")
    words = ["a", "bb", "ccc", "dog", "eel", "fig", "goat", "hat", "ink", "jar", "kite", "lamp", "moon", "nest"]
    prompts = [f"example:{w}->" for w in [*words, "owl", "pig"]]
    hidden = plain.model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(2)
    own = PerPrompt(tuple([Add(Site(1), torch.randn(hidden, generator=g))] for _ in prompts))
    variants = [None, own, [Add(Site(0), torch.randn(hidden, generator=g))]]
    expected = FastExecutor(plain).last_token(prompts, variants).ids
    assert not torch.equal(FastExecutor(mixed, recheck_margin=None).last_token(prompts, variants).ids, expected)
    got = FastExecutor(mixed, recheck_margin=0.5).last_token(prompts, variants).ids
    assert torch.equal(got, expected)
    for v, variant in enumerate(variants):
        edits = None if variant is None else (list(own.rows) if v == 1 else [variant] * len(prompts))
        assert torch.equal(FastExecutor(mixed, recheck_margin=0.5).predict(prompts, edits).ids, got[v])
