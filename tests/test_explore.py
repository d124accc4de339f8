"""The functions behind each panel of ``taskvec explore``, on tiny random models: parsing the boxes, the
analysis (answers, heatmap, best layer, vocabulary projection), the task vector download and upload."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.api.patching import apply_task_vector
from taskvec.api.sweep import layer_sweep
from taskvec.engine.projection import projected_top_tokens
from taskvec.errors import TaskvecError
from taskvec.explore import analysis, compute
from taskvec.explore.inputs import (
    MAX_DEMONSTRATIONS,
    MAX_LINE_CHARS,
    ExploreInputError,
    Query,
    parse_demonstrations,
    parse_queries,
)

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = "a -> b\nb -> c\nc -> d\nd -> e\ne -> f"
QUERIES = "f -> g\ng -> h\nh\ni -> j"


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def result(tiny):
    return analysis.analyse(tiny, DEMOS, QUERIES)


# --- the boxes ------------------------------------------------------------------------------------


def test_parse_demonstrations_and_queries():
    parsed = parse_demonstrations(" go -> going \n\nx->y\n")
    assert parsed.items == (("go", "going"), ("x", "y"))
    assert parsed.notices == ("demonstrations: skipped 1 empty line",)
    queries = parse_queries("a\nb -> B\r\nc ->  ")
    assert queries.items == (Query("a"), Query("b", "B"), Query("c", None))
    assert parse_demonstrations("a,b -> c -> d").items == (("a,b", "c -> d"),)  # split at the first arrow


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "demonstrations: nothing entered"),
        ("\n  \n", "demonstrations: nothing entered"),
        ("a -> b\nno arrow here", "demonstrations line 2: 'no arrow here' has no `->`"),
        ("-> b", "has an empty input"),
        ("a ->", "has an empty output"),
        ("a -> b\na -> c", "input 'a' repeats line 1"),
        ("\n".join(["a->b"] * 10_000), "10000 lines; at most 64"),
        ("x" * 200_000, "200000 characters pasted"),
        ("a -> " + "b" * (MAX_LINE_CHARS + 1), f"at most {MAX_LINE_CHARS}"),
        ("a\x00 -> b", "control characters"),
        (None, "expected text, got NoneType"),
    ],
)
def test_bad_demonstrations_are_one_clear_line(text, message):
    with pytest.raises(ExploreInputError, match=None) as err:
        parse_demonstrations(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_queries():
    with pytest.raises(ExploreInputError, match="queries: nothing entered"):
        parse_queries("   ")
    with pytest.raises(ExploreInputError, match="empty input"):
        parse_queries("-> x")
    with pytest.raises(ExploreInputError, match="201 lines"):
        parse_queries("\n".join(f"q{i}" for i in range(201)))
    assert len(parse_demonstrations("\n".join(f"w{i} -> x" for i in range(MAX_DEMONSTRATIONS))).items) == 64


# --- the analysis ---------------------------------------------------------------------------------


def test_analysis_shapes_and_answers(tiny, result):
    n, layers = 4, tiny.num_layers
    assert [a["query"] for a in result["answers"]] == ["f", "g", "h", "i"]
    h = result["heatmap"]
    assert h["layers"] == list(range(layers)) and h["queries"] == ["f", "g", "h", "i"]
    assert len(h["predictions"]) == layers and all(len(row) == n for row in h["predictions"])
    assert all(row[2] is None for row in h["correct"])  # query h has no gold answer
    assert all(row[2] is None for row in h["gold_prob"])
    for row in h["gold_prob"]:
        assert all(0.0 <= p <= 1.0 for j, p in enumerate(row) if j != 2)
    assert 0 <= result["best_layer"] < layers
    assert "accuracy on the 3 queries" in result["best_layer_basis"]
    assert len(result["projection"]) == layers and all(len(row) == analysis.TOP_K for row in result["projection"])
    assert result["answers"][2]["correct"] == {"icl": None, "task_vector": None, "zero_shot": None}


def test_heatmap_is_the_engines_layer_sweep(tiny, result):
    """The heatmap's argmax is the engine's sweep; the task-vector column is the engine's apply at the
    best layer; the projection is the engine's logit lens."""
    theta = result["_task_vector"]
    template = compute.template_of(theta)
    assert template.to_dict() == result["template"]
    queries = result["heatmap"]["queries"]
    sweep = layer_sweep(tiny, theta, queries)
    assert sweep.predictions == result["heatmap"]["predictions"]
    best = result["best_layer"]
    assert [a["task_vector"] for a in result["answers"]] == apply_task_vector(tiny, theta, queries, best)
    assert [a["task_vector"] for a in result["answers"]] == result["heatmap"]["predictions"][best]
    lens = projected_top_tokens(tiny, theta.vectors, analysis.TOP_K)
    assert [[t["token"] for t in row] for row in result["projection"]] == [[t for t, _ in row] for row in lens]


@pytest.mark.parametrize(("method", "key"), [("fv", "function_vector"), ("icv", "in_context_vector"),
                                           ("meandiff", "mean_difference")])  # fmt: skip
def test_another_method_fills_the_answers_column(tiny, result, method, key):
    """The answers column is the chosen method's vector applied as its method applies it (a function vector
    at its default layer, the others at every layer); the heatmap, best layer and projection stay theta's."""
    out = analysis.analyse(tiny, DEMOS, QUERIES, method=method)
    vector = out["_vector"]
    assert vector.method == key and out["method"]["key"] == key and out["method"]["name"] == method
    expected_layer = tiny.num_layers // 3 if method == "fv" else None
    assert vector.layer == out["method"]["layer"] == expected_layer
    assert out["method"]["where"] == ("every layer" if expected_layer is None else f"layer {expected_layer}")
    queries = out["heatmap"]["queries"]
    assert [a[key] for a in out["answers"]] == apply_task_vector(tiny, vector, queries)
    assert all("task_vector" not in a and set(a["correct"]) == {"icl", key, "zero_shot"} for a in out["answers"])
    assert [a["icl"] for a in out["answers"]] == [a["icl"] for a in result["answers"]]
    for name in ("heatmap", "best_layer", "projection"):
        assert out[name] == result[name]
    assert out["_task_vector"].method == "task_vector"
    applied = analysis.apply_uploaded(tiny, compute.task_vector_bytes(vector), "f -> g\nz")
    assert applied["method"] == {k: v for k, v in out["method"].items() if k != "name"}
    assert [a["task_vector"] for a in applied["answers"]] == apply_task_vector(tiny, vector, ["f", "z"])
    assert applied["answers"][0]["task_vector"] == out["answers"][0][key]


def test_an_unknown_method_is_refused(tiny):
    with pytest.raises(ExploreInputError, match=r"unknown method 'sae'; expected one of tv \(task vector\)"):
        analysis.analyse(tiny, DEMOS, QUERIES, method="sae")
    assert analysis.check_method(None) == "tv"


def test_gold_probability_is_the_softmax_of_the_patched_logits(tiny, result):
    from taskvec.core.sites import replacements
    from taskvec.engine.batching import collate, encode
    from taskvec.engine.forward import next_token_logits
    from taskvec.engine.interventions import intervene

    theta = result["_task_vector"]
    template = compute.template_of(theta)
    layer, query, gold = 1, "f", "g"
    batch = collate(tiny, encode(tiny, [template.query_prompt(query)]))
    with intervene(tiny.adapter.layers, replacements([layer], theta.vectors[layer : layer + 1])):
        logits = next_token_logits(tiny, batch)[0]
    gold_id = compute.answer_tokens(tiny, template, [(query, gold)])[0][0]
    expected = torch.softmax(logits, dim=-1)[gold_id].item()
    assert math.isclose(result["heatmap"]["gold_prob"][layer][0], expected, rel_tol=1e-4)


def test_without_gold_answers_the_best_layer_follows_icl(tiny):
    out = analysis.analyse(tiny, DEMOS, "f\ng")
    assert "agreement with the ICL answers" in out["best_layer_basis"]
    assert out["heatmap"]["accuracy"] == [None] * tiny.num_layers


def test_multi_token_gold_is_scored_by_prefix():
    gemma = make_tiny_model("gemma3")
    out = analysis.analyse(gemma, DEMOS, "f -> gh\ng -> h")
    assert any("'gh' is 2 tokens; scored by prefix" in n for n in out["notices"])
    assert out["answers"][0]["correct"]["icl"] is not None


def test_unscorable_gold_is_a_notice_not_a_failure(tiny, monkeypatch):
    real = compute.answer_tokens
    # a gold answer that merges with the query's last token (BPE tokenizers do this) has no first token
    monkeypatch.setattr(
        compute,
        "answer_tokens",
        lambda lm, t, pairs: [[] if y == "g" else ids for (_, y), ids in zip(pairs, real(lm, t, pairs))],
    )
    out = analysis.analyse(tiny, DEMOS, "f -> g\ng -> h")
    assert any("gold answer 'g' cannot be scored" in n for n in out["notices"])
    assert out["answers"][0]["correct"] == {"icl": None, "task_vector": None, "zero_shot": None}
    assert out["answers"][1]["correct"]["icl"] is not None
    assert all(row[0] is None for row in out["heatmap"]["gold_prob"])


def test_progress_and_cancel(tiny):
    seen = []
    analysis.analyse(tiny, DEMOS, QUERIES, report=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 1

    def cancel_in_sweep(fraction, message):
        if "patching" in message:
            raise analysis.Cancelled

    with pytest.raises(analysis.Cancelled):
        analysis.analyse(tiny, DEMOS, QUERIES, report=cancel_in_sweep)


def test_bad_input_to_the_analysis(tiny):
    with pytest.raises(ExploreInputError, match="unknown task"):
        analysis.analyse(tiny, DEMOS, QUERIES, task="no_such_task")
    with pytest.raises(TaskvecError, match="single demonstration"):
        analysis.analyse(tiny, "a -> b", "c")


# --- built-in tasks -------------------------------------------------------------------------------


def test_task_prefill_is_held_out_and_parses(tiny):
    prefill = analysis.task_prefill(tiny, "to_upper", seed=0)
    demos = parse_demonstrations(prefill["demonstrations"]).items
    queries = parse_queries(prefill["queries"]).items
    assert len(demos) == 5 and len(queries) == 10
    assert not {x for x, _ in demos} & {q.input for q in queries}
    assert all(q.gold == q.input.upper() for q in queries)
    out = analysis.analyse(tiny, prefill["demonstrations"], prefill["queries"], task="to_upper")
    assert out["task"] == "to_upper" and out["notices"] == []
    assert {t["name"] for t in analysis.task_catalog()} >= {"to_upper", "country_capital"}


# --- download and upload --------------------------------------------------------------------------


def test_download_then_apply_the_file(tiny, result):
    theta = result["_task_vector"]
    data = compute.task_vector_bytes(theta)
    assert theta.layer == result["best_layer"]
    applied = analysis.apply_uploaded(tiny, data, "f -> g\nz")
    assert applied["layer"] == result["best_layer"] and applied["model"] == "tiny-llama"
    assert [a["task_vector"] for a in applied["answers"]] == apply_task_vector(tiny, theta, ["f", "z"])
    assert applied["answers"][1]["correct"]["task_vector"] is None


def test_bad_uploads_are_clear_errors(tiny, result):
    with pytest.raises(TaskvecError, match="not a taskvec safetensors file"):
        analysis.apply_uploaded(tiny, b"not a safetensors file", "a")
    other = make_tiny_model("qwen2")
    with pytest.raises(TaskvecError, match="extracted from 'tiny-llama'"):
        analysis.apply_uploaded(other, compute.task_vector_bytes(result["_task_vector"]), "a")


def test_cached_heatmap_equals_plain_patched_forwards_in_every_family(lm):
    """The heatmap reuses each query's key/value cache; its answers and probabilities are those of whole
    patched forward passes (and of the engine's sweep) in every architecture family."""
    from taskvec.core.sites import replacements
    from taskvec.engine.batching import collate, encode
    from taskvec.engine.forward import next_token_logits
    from taskvec.engine.interventions import intervene

    out = analysis.analyse(lm, DEMOS, "f -> g\ngg -> h\nxyz -> k")
    theta = out["_task_vector"]
    template = compute.template_of(theta)
    queries = out["heatmap"]["queries"]
    assert layer_sweep(lm, theta, queries).predictions == out["heatmap"]["predictions"]
    prompts = [template.query_prompt(q) for q in queries]
    gold = [ids[0] for ids in compute.answer_tokens(lm, template, [("f", "g"), ("gg", "h"), ("xyz", "k")])]
    for layer in range(lm.num_layers):
        batch = collate(lm, encode(lm, prompts))
        vectors = theta.vectors[layer].expand(len(prompts), -1)
        with intervene(lm.adapter.layers, replacements([layer] * len(prompts), vectors)):
            probs = torch.softmax(next_token_logits(lm, batch), dim=-1)
        expected = [probs[j, g].item() for j, g in enumerate(gold)]
        assert out["heatmap"]["gold_prob"][layer] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def test_results_do_not_depend_on_how_the_work_is_chunked(tiny, result, monkeypatch):
    monkeypatch.setattr(compute, "GRID_ROWS", 3)  # 4 queries: groups of 3 and 1, one layer per forward
    monkeypatch.setattr(analysis, "ANSWER_CHUNK", 3)
    steps = []
    again = analysis.analyse(tiny, DEMOS, QUERIES, report=lambda f, m: steps.append(m))
    assert steps.count("patching theta at every layer") > tiny.num_layers
    assert again["answers"] == result["answers"]
    assert again["heatmap"]["predictions"] == result["heatmap"]["predictions"]
    for row_a, row_b in zip(again["heatmap"]["gold_prob"], result["heatmap"]["gold_prob"]):
        assert [a is None for a in row_a] == [b is None for b in row_b]
        assert [a for a in row_a if a is not None] == pytest.approx([b for b in row_b if b is not None], rel=1e-4)
