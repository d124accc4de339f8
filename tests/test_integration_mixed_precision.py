"""``--dtype mixed`` on the real default model: exact mode is float32, and with close calls rechecked the
test predictions of a task equal the float32 run's."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.models.precision import exact_products
from taskvec.tasks import builtin_task, prepare_task

pytestmark = pytest.mark.integration


def test_mixed_gemma_matches_float32_on_test_predictions():
    fp32 = taskvec.load_model("gemma-3-270m")
    mixed = taskvec.load_model("gemma-3-270m", dtype="mixed")
    assert mixed.precision == "mixed" and fp32.precision == "float32"
    batch = collate(fp32, encode(fp32, ["example:France->", "example:dog->", "The capital of Japan is"]))
    expected = next_token_logits(fp32, batch)
    with exact_products(mixed.model):
        assert torch.equal(next_token_logits(mixed, batch), expected)
    approx = next_token_logits(mixed, batch)
    assert 0 < float((approx - expected).abs().max()) < 0.5  # bf16 products move logits by a little

    config = MainConfig(n_dev=12, n_test=12, n_baseline=12, batch_size=32)
    prepared = prepare_task(fp32, builtin_task("country_capital"))
    plain, plain_rows = evaluate_task(fp32, prepared, config)
    checked, checked_rows = evaluate_task(mixed, prepared, MainConfig(**{**config.__dict__, "dtype": "mixed"}))
    assert set(checked["close_calls"]) == {"margin", "hypothesis", "regular", "baseline"}
    if plain["best_layer"] == checked["best_layer"]:
        test_pairs = [(a, b) for a, b in zip(plain_rows, checked_rows) if a["split"] == "test"]
        assert [a["prediction"] for a, _ in test_pairs] == [b["prediction"] for _, b in test_pairs]
    dev_same = [a["prediction"] == b["prediction"] for a, b in zip(plain_rows, checked_rows) if a["split"] == "dev"]
    assert sum(dev_same) >= 0.95 * len(dev_same)
