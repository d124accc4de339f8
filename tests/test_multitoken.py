"""The multi-token measurement and the preparation option that keeps multi-token answers (tiny model)."""

from __future__ import annotations

import string

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.core.answering import step_edits, with_steps
from taskvec.core.decoding import CONTROL_MARKER, StopRule, decode_answer
from taskvec.core.methods import TASK_VECTOR
from taskvec.core.sites import GENERATED, Add, Replace, Site
from taskvec.errors import TaskvecError
from taskvec.experiments.multitoken import (
    DEFAULT_VARIANT,
    METHODS,
    OTHER_TEMPLATES,
    VARIANTS,
    MultiTokenConfig,
    evaluate_multitoken,
    f1_entry,
    token_f1,
)
from taskvec.prompts import DEFAULT_TEMPLATE
from taskvec.runtime import make_executor
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
        assert set(entry["variants"]) == set(VARIANTS) | {
            f"{m}_{s}" for m in ("icl", "zero") for s in ("newline", "format", "demos")
        }
        for name, scores in entry["variants"].items():
            hits = sum(e[name] == e["gold"] for e in entry["examples"])
            assert scores["exact"]["accuracy"] == hits / 5
            f1 = [token_f1(e[name], Pair(e["query"], e["gold"])) for e in entry["examples"]]
            assert scores["f1"]["mean"] == pytest.approx(sum(f1) / 5) and scores["f1"]["mean"] >= hits / 5
        assert entry["task_vector"] == entry["variants"][DEFAULT_VARIANT]["exact"]
        assert entry["regular"] == entry["variants"]["icl_format"]["exact"]
    assert set(result["templates"]) == set(OTHER_TEMPLATES)
    for entry in result["templates"].values():
        assert {g: [entry["groups"][g][m]["n"] for m in METHODS] for g in entry["groups"]} == {
            "1": [5] * 3,
            "2+": [5] * 3,
        }


def test_token_f1_and_interval():
    pair = Pair("x", "New York", ("NYC",))
    assert token_f1("new york", pair) == 1.0 and token_f1("NYC", pair) == 1.0
    assert token_f1("New Delhi", pair) == pytest.approx(0.5) and token_f1("", pair) == 0.0
    entry = f1_entry([1.0, 0.0, 0.5, 0.5])
    assert entry["mean"] == 0.5 and 0.0 <= entry["ci95"][0] < 0.5 < entry["ci95"][1] <= 1.0


def test_stop_rule_from_the_template_and_special_tokens_never_in_answers():
    rule = StopRule.from_template(DEFAULT_TEMPLATE)
    assert rule.stop_strings == ("\n", "example:", "->") and rule.special
    assert rule.cut("Paris->Paris") == "Paris" and rule.cut("Paris example:France") == "Paris "
    lm = make_tiny_model("llama")
    ids = lm.tokenizer("ab", add_special_tokens=False)["input_ids"]
    unk = lm.tokenizer.unk_token_id
    assert decode_answer(lm, [*ids, unk, *ids]) == "ab"  # cut at the special token
    assert decode_answer(lm, [*ids, unk, *ids], StopRule(special=False)) != "ab"
    assert CONTROL_MARKER.fullmatch("<start_of_image>") and CONTROL_MARKER.fullmatch("<|im_end|>")
    assert not CONTROL_MARKER.fullmatch("<table>") and not CONTROL_MARKER.fullmatch("</td>")


@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_decoding_modes_apply_the_vector_at_generated_positions(kind):
    """every_delta with alpha 0 and first are the same decoding; every_replace puts theta at each generated
    position (checked against a hand-made loop), every_delta adds theta minus the prompt's own state."""
    lm = make_tiny_model("llama")
    executor = make_executor(lm, kind, 4)
    prompts = [DEFAULT_TEMPLATE.query_prompt(q) for q in ("a", "bc", "d")]
    thetas = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    first = [TASK_VECTOR.edits(1, v) for v in thetas]
    none = StopRule(eos=False, stop_strings=(), special=False)
    plain = executor.generate(prompts, 4, first, none)
    zero = step_edits(executor, prompts, first, "every_delta", alpha=0.0)
    assert all(len(row) == 1 and torch.count_nonzero(row[0].value) == 0 for row in zero)
    assert executor.generate(prompts, 4, with_steps(first, zero), none) == plain
    assert step_edits(executor, prompts, first, "first") is None
    assert with_steps(first, None) == [list(row) for row in first]
    replaced = step_edits(executor, prompts, first, "every_replace")
    for (e,), v in zip(replaced, thetas):
        assert isinstance(e, Replace) and e.site == Site(1, GENERATED) and torch.equal(e.value, v)
    delta = step_edits(executor, prompts, first, "every_delta")
    own = executor.states([[p] for p in prompts], [1])[:, 0]
    for (e,), v, h in zip(delta, thetas, own):
        assert isinstance(e, Add) and e.site == Site(1, GENERATED) and torch.allclose(e.value, v - h, atol=1e-5)
    merged = with_steps(first, replaced)
    assert [[type(e) for e in row] for row in merged] == [[Replace, Replace]] * 3
    assert [[e.site.position for e in row] for row in merged] == [[-1, GENERATED]] * 3
    with pytest.raises(TaskvecError, match="decoding mode 'sometimes'"):
        step_edits(executor, prompts, first, "sometimes")


def test_stop_rule_from_demonstrations_cuts_at_unseen_punctuation_and_length():
    rule = StopRule.from_demonstrations(DEFAULT_TEMPLATE, ["Paris", "Buenos Aires", "St. John's"], [1, 3, 4])
    assert "," in rule.stop_strings and "." not in rule.stop_strings and rule.max_tokens == 5
    assert rule.cut("Cape Town, South Africa") == "Cape Town"
    lm = make_tiny_model("llama")
    capped = StopRule(eos=False, stop_strings=(), special=False, max_tokens=2)
    from taskvec.engine.generation import generate_ids

    assert [len(r) for r in generate_ids(lm, ["example:a->", "example:b->"], 6, stop=capped)] == [2, 2]


def test_function_vector_variants_and_templates_when_asked(tmp_path):
    from taskvec.experiments.multitoken_run import run_multitoken

    lm = make_tiny_model("gemma3")
    config = MultiTokenConfig(n_dev=4, n_test=3, max_new_tokens=3, with_fv=True, templates=("paper", "qa"))
    results = run_multitoken("tiny", [TASK], config, tmp_path, lm=lm)
    task = results["tasks"]["mixed"]
    assert 0 <= task["function_vector"]["layer"] < lm.num_layers and task["function_vector"]["k"] >= 1
    for entry in task["groups"].values():
        assert {"fv_first_demos", "fv_every_demos"} <= set(entry["variants"])
    assert all("function_vector" in g for t in task["templates"].values() for g in t["groups"].values())
    assert "Function vector" in (tmp_path / "report.md").read_text()


def test_asking_for_the_function_vector_leaves_the_task_vector_results_unchanged():
    lm = make_tiny_model("gemma3")
    base = MultiTokenConfig(n_dev=4, n_test=3, max_new_tokens=2, templates=("paper",))
    plain = evaluate_multitoken(lm, TASK, base)
    with_fv = evaluate_multitoken(lm, TASK, MultiTokenConfig(**{**base.__dict__, "with_fv": True}))
    for group, entry in plain["groups"].items():
        assert [e["query"] for e in entry["examples"]] == [e["query"] for e in with_fv["groups"][group]["examples"]]
        for name in VARIANTS:
            assert entry["variants"][name] == with_fv["groups"][group]["variants"][name]


def test_every_position_methods_decode_with_their_edits_at_every_position_and_at_the_prompt_only(tmp_path):
    from taskvec.experiments.multitoken_run import run_multitoken

    lm = make_tiny_model("gemma3")
    config = MultiTokenConfig(n_dev=4, n_test=3, max_new_tokens=3, templates=("paper",),
                              every=("in_context_vector", "mean_difference"))  # fmt: skip
    results = run_multitoken("tiny", [TASK], config, tmp_path, lm=lm)
    task = results["tasks"]["mixed"]
    assert set(task["every_position"]) == {"in_context_vector", "mean_difference"}
    for entry in task["groups"].values():
        assert {"icv_all_demos", "icv_prompt_demos", "meandiff_all_demos", "meandiff_prompt_demos"} <= set(
            entry["variants"])
    plain = evaluate_multitoken(lm, TASK, MultiTokenConfig(n_dev=4, n_test=3, max_new_tokens=3, templates=("paper",)))
    for group, entry in plain["groups"].items():
        for name in VARIANTS:  # the task vector's variants do not depend on the other methods
            assert entry["variants"][name] == task["groups"][group]["variants"][name]
