"""The analyses on the real default model (gemma-3-270m), at small sizes. Marked `integration`.

Layers are fixed (9 and 11: best layers of the protocol-1 reference run, docs/results/protocol1/gemma-3-270m)
so that no sweep runs.
"""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import last_position_states, next_token_logits
from taskvec.engine.projection import logit_softcap, project_to_vocab
from taskvec.experiments.analysis_setup import LayerOptions
from taskvec.experiments.conflict import ConflictConfig, run_conflict
from taskvec.experiments.interpret import InterpretConfig, run_interpret
from taskvec.experiments.robustness import RobustnessConfig, run_robustness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma():
    return taskvec.load_model("gemma-3-270m")


def test_projection_of_the_last_block_reproduces_gemmas_logits(gemma):
    assert logit_softcap(gemma) is None  # Gemma-3 has no final soft-capping (Gemma-2 had)
    batch = collate(gemma, encode(gemma, ["example:France-> Paris\nexample:Japan->", "The capital of Italy is"]))
    hidden = last_position_states(gemma, batch, [gemma.num_layers - 1])[0]
    expected = next_token_logits(gemma, batch)
    torch.testing.assert_close(project_to_vocab(gemma, hidden), expected, rtol=1e-3, atol=1e-3)
    assert gemma.tokenizer.decode(expected.argmax(-1)[:1]).strip() == "Tokyo"


def test_task_vectors_cluster_by_task(gemma):
    config = RobustnessConfig(tasks=("to_upper", "fr_en", "country_capital"), n_vectors=8, perplexity=5.0,
                              layers=LayerOptions(layer=9))  # fmt: skip
    results, vectors, _ = run_robustness(config, lm=gemma)
    assert vectors.shape == (24, 640)
    assert results["silhouette"]["task"] > 0.3
    for name, entry in results["tasks"].items():
        assert entry["within_mean"] < 0.5 * entry["across_mean"], name


def test_gerund_theta_overrides_past_tense_demonstrations(gemma):
    """The paper's fourth pair: present->past demonstrations, present->gerund theta patched at layer 11.
    Reference (50 prompts): ICL vs past 0.80, patched vs gerund 0.82, patched vs past 0.00."""
    config = ConflictConfig(pairs=(("present_past", "present_gerund"),), n_sets=16, layers=LayerOptions(layer=11))
    pair = run_conflict(config, lm=gemma)[0]["pairs"][0]
    assert pair["icl_vs_a"]["accuracy"] >= 0.5
    assert pair["icl_vs_b"]["accuracy"] <= 0.2
    assert pair["patched_vs_b"]["accuracy"] >= 0.5
    assert pair["patched_vs_a"]["accuracy"] <= 0.2


def test_country_capital_theta_projects_onto_capitals(gemma):
    config = InterpretConfig(tasks=("country_capital",), n_sets=10, n_single=0, top_k=20, words_only=True,
                             layers=LayerOptions(layer=9))  # fmt: skip
    found = run_interpret(config, lm=gemma)["tasks"]["country_capital"]["by_layer"]["9"]["mean"]
    words = [t["token"].strip() for t in found]
    assert len(words) == 20 and all(w.isalpha() for w in words)
    assert len({w.lower() for w in words}) == 20
