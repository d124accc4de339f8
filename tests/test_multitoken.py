"""The multi-token measurement and the preparation option that keeps multi-token answers (tiny model)."""

from __future__ import annotations

import string

import pytest
from tiny_models import make_tiny_model

from taskvec.experiments.multitoken import METHODS, MultiTokenConfig, evaluate_multitoken
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import prepare_task

pytestmark = pytest.mark.usefixtures("single_thread")

# With the character-level tiny tokenizer an answer of k characters is k tokens.
TASK = Task(
    name="mixed", category="knowledge", description="", scoring="exact",
    pairs=tuple(Pair(c, c.upper() * (1 + i % 3)) for i, c in enumerate(string.ascii_lowercase)),
)  # fmt: skip


def test_preparation_keeps_multi_token_answers_only_when_asked():
    lm = make_tiny_model("llama")
    default = prepare_task(lm, TASK)
    kept = prepare_task(lm, TASK, keep_multi_token=True)
    assert all(len(p.output) == 1 for p in default.pairs) and default.answer_tokens == (1,) * len(default.pairs)
    assert len(kept.pairs) == 26 and kept.answer_tokens == tuple(len(p.output) for p in kept.pairs)


def test_evaluate_multitoken_scores_each_group_on_full_answers():
    lm = make_tiny_model("qwen2")
    result = evaluate_multitoken(lm, TASK, MultiTokenConfig(n_dev=4, n_test=5, max_new_tokens=4))
    assert set(result["groups"]) == {"1", "2+"} and 0 <= result["layer"] < lm.num_layers
    for group, entry in result["groups"].items():
        assert [entry[m]["n"] for m in METHODS] == [5, 5, 5]
        for example in entry["examples"]:
            assert (len(example["gold"]) == 1) == (group == "1")
        for m in METHODS:
            hits = sum(e[m] == e["gold"] for e in entry["examples"])
            assert entry[m]["accuracy"] == hits / 5
