"""The paper's analyses on tiny random models: vocabulary projection, conflicting tasks, robustness."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, make_tiny_model, patched_token_ids

from taskvec.api.extraction import mean_states
from taskvec.cli import main
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import last_position_states, next_token_logits, predict_token_ids
from taskvec.engine.projection import logit_softcap, project_to_vocab, top_tokens
from taskvec.errors import TaskDataError, TaskvecError
from taskvec.experiments.analysis_setup import LayerOptions, layers_from_run
from taskvec.experiments.conflict import ConflictConfig, parse_pairs, run_conflict, shared_queries
from taskvec.experiments.interpret import InterpretConfig, run_interpret
from taskvec.experiments.robustness import (
    RobustnessConfig,
    check_sizes,
    distance_stats,
    embed,
    run_robustness,
    silhouette,
)
from taskvec.io.vector_files import load_vectors
from taskvec.report.analysis_render import write_conflict, write_interpret, write_robustness
from taskvec.stats import cosine_distance_matrix
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["example:a-> b\nexample:c-> d\nexample:e->", "example:k->", "example:xyz-> q\nexample:m->"]


# --- vocabulary projection -------------------------------------------------------------------------------


def test_projecting_the_last_block_output_reproduces_the_models_logits(lm):
    """Every family, GPT-J's final LayerNorm included: final norm + unembedding of the last block's output."""
    batch = collate(lm, encode(lm, PROMPTS))
    hidden = last_position_states(lm, batch, [lm.num_layers - 1])[0]
    expected = next_token_logits(lm, batch)
    projected = project_to_vocab(lm, hidden)
    assert projected.shape == expected.shape
    torch.testing.assert_close(projected, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(projected.argmax(-1), expected.argmax(-1))


def test_projection_skipping_the_final_norm_would_not_match(lm):
    """The check above can fail: without the final norm the logits differ (the reference code's GPT-J bug)."""
    batch = collate(lm, encode(lm, PROMPTS))
    hidden = last_position_states(lm, batch, [lm.num_layers - 1])[0]
    without_norm = lm.adapter.unembedding(hidden).float()
    assert not torch.allclose(without_norm, next_token_logits(lm, batch), atol=1e-3)


def test_projection_honours_logit_softcapping():
    lm = make_tiny_model("gemma3", seed=7)  # a private instance: its config is changed here
    lm.model.config.final_logit_softcapping = 0.5
    try:
        assert logit_softcap(lm) == 0.5
        batch = collate(lm, encode(lm, PROMPTS))
        hidden = last_position_states(lm, batch, [lm.num_layers - 1])[0]
        projected = project_to_vocab(lm, hidden)
        torch.testing.assert_close(projected, next_token_logits(lm, batch), rtol=1e-4, atol=1e-4)
        assert projected.abs().max() <= 0.5
    finally:
        lm.model.config.final_logit_softcapping = None


def test_top_tokens_words_only_skips_non_words_and_duplicates():
    lm = make_tiny_model("llama")
    logits = torch.zeros(1, len(VOCAB))
    for rank, token in enumerate(["a", "A", "1", " ", "b", ",", "c"]):
        logits[0, VOCAB[token]] = 10.0 - rank
    assert [t for t, _ in top_tokens(lm, logits, 3)[0]] == ["a", "A", "1"]
    words = top_tokens(lm, logits, 3, words_only=True)[0]
    assert [t for t, _ in words] == ["a", "b", "c"]
    assert [v for _, v in words] == [10.0, 6.0, 4.0]


@pytest.mark.parametrize("k", [0, -1, len(VOCAB) + 1, 2.5])
def test_top_k_outside_the_vocabulary_is_refused(k):
    lm = make_tiny_model("llama")
    with pytest.raises(TaskvecError, match=f"vocabulary size {len(VOCAB)}"):
        top_tokens(lm, torch.zeros(1, len(VOCAB)), k)


def test_projection_of_a_vector_of_another_size_is_refused():
    with pytest.raises(TaskvecError, match="hidden size"):
        project_to_vocab(make_tiny_model("llama"), torch.zeros(2, 7))


def test_interpret_lists_top_tokens_per_task_and_layer(tmp_path):
    lm = make_tiny_model("gpt2")
    config = InterpretConfig(tasks=("to_upper", "next_letter"), extra_layers=(0, 2), n_sets=4, n_single=2, top_k=5)
    results = run_interpret(config, lm=lm)
    assert set(results["tasks"]) == {"to_upper", "next_letter"}
    for entry in results["tasks"].values():
        assert list(entry["by_layer"]) == ["0", "2"]
        for found in entry["by_layer"].values():
            assert len(found["mean"]) == 5 and len(found["single"]) == 2
            logits = [t["logit"] for t in found["mean"]]
            assert logits == sorted(logits, reverse=True)
    paths = write_interpret(tmp_path, results)
    assert "| to_upper | 0 |" in paths["md"].read_text()
    with pytest.raises(TaskvecError, match="vocabulary size"):
        run_interpret(InterpretConfig(tasks=("to_upper",), top_k=len(VOCAB) + 1), lm=lm)


# --- conflicting tasks -----------------------------------------------------------------------------------


def test_patching_a_prompts_own_state_into_its_full_icl_prompt_changes_nothing(lm):
    """The conflict experiment's path: theta patched into the full ICL prompt. With the prompt's own state
    (theta of A, same demonstrations and query) the answers are regular ICL's, at every layer."""
    prompts = PROMPTS * 2
    regular = predict_token_ids(lm, prompts)
    states = mean_states(lm, [[p] for p in prompts])  # (N, layers, H)
    for layer in range(lm.num_layers):
        patched = patched_token_ids(lm, prompts, states[:, layer], [layer] * len(prompts))
        assert torch.equal(patched, regular), layer


def test_patching_another_tasks_state_into_the_icl_prompt_changes_answers():
    """The same path can fail: a very different vector at the last block changes the predictions."""
    lm = make_tiny_model("llama")
    regular = predict_token_ids(lm, PROMPTS)
    vectors = torch.randn(len(PROMPTS), 32, generator=torch.Generator().manual_seed(0)) * 50
    assert not torch.equal(patched_token_ids(lm, PROMPTS, vectors, [lm.num_layers - 1] * len(PROMPTS)), regular)


def test_conflict_runs_and_scores_against_both_tasks(tmp_path):
    lm = make_tiny_model("qwen2")
    pairs = (("next_letter", "to_upper"), ("list_last", "list_first"))
    config = ConflictConfig(pairs=pairs, n_sets=8, layers=LayerOptions(layer=1))
    results, rows = run_conflict(config, lm=lm)
    assert [(p["a"], p["b"]) for p in results["pairs"]] == list(pairs)
    first = results["pairs"][0]
    assert first["n_shared_queries"] == 25 and first["layer_b"] == 1
    assert first["paper_llama13b"] == {"icl_vs_a": 0.91, "patched_vs_b": 0.77}
    assert first["icl_vs_a"]["n"] == 8 and len(rows) == 16
    for row in rows:  # a query of both tasks, each with its own answer
        assert row["prompt"].endswith(f"example:{row['query']}->")
        assert row["prompt"].count("\n") == 5  # five demonstrations of A
    upper = [r for r in rows if r["b"] == "to_upper"]
    assert all(r["gold_b"] == r["query"].upper() and r["gold_a"] == chr(ord(r["query"]) + 1) for r in upper)
    again, _ = run_conflict(config, lm=lm)
    assert again["pairs"] == results["pairs"]  # seeded
    paths = write_conflict(tmp_path, results, rows)
    assert "next_letter -> to_upper" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["model"]["id"] == lm.model_id


def test_conflict_pair_errors():
    with pytest.raises(TaskvecError, match="unknown task 'nope'"):
        parse_pairs("next_letter:nope")
    with pytest.raises(TaskvecError, match="form A:B"):
        parse_pairs("next_letter")
    with pytest.raises(TaskvecError, match="same task"):
        parse_pairs("to_upper:to_upper")
    assert parse_pairs(" en_es : en_fr , ") == (("en_es", "en_fr"),)


def test_incompatible_tasks_are_refused_with_the_count():
    lm = make_tiny_model("llama")
    letters, lists = prepare_task(lm, builtin_task("next_letter")), prepare_task(lm, builtin_task("list_first"))
    with pytest.raises(TaskDataError, match="0 queries are valid inputs of both"):
        shared_queries(letters, lists, 10)
    upper = prepare_task(lm, builtin_task("to_upper"))
    assert len(shared_queries(letters, upper, 10)) == 25
    with pytest.raises(TaskDataError, match=r"25 queries .* need at least 30"):
        shared_queries(letters, upper, 30)
    with pytest.raises(TaskDataError, match="0 queries"):
        run_conflict(ConflictConfig(pairs=(("next_letter", "list_first"),), layers=LayerOptions(layer=0)), lm=lm)


# --- robustness ------------------------------------------------------------------------------------------


def clusters(n_per: int = 10, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 5
    points = np.concatenate([c + rng.normal(size=(n_per, 16)) * 0.3 for c in centres])
    return points, [name for name in ("a", "b", "c") for _ in range(n_per)]


def test_distances_and_silhouette_see_clusters():
    points, labels = clusters()
    distances = cosine_distance_matrix(points)
    assert np.allclose(np.diag(distances), 0, atol=1e-6)
    stats = distance_stats(distances, labels)
    assert all(s["within_mean"] < s["across_mean"] and s["ratio"] < 0.2 for s in stats.values())
    assert silhouette(distances, labels) > 0.8
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert silhouette(distances, shuffled) < 0.1
    assert silhouette(distances, ["x"] * len(labels)) is None


def test_embeddings_have_one_point_per_vector_and_are_seeded():
    points, _ = clusters()
    (first, explained), (second, _) = embed(points, 3, 5.0), embed(points, 3, 5.0)
    for key in ("tsne", "pca"):
        assert first[key].shape == (len(points), 2)
        assert np.array_equal(first[key], second[key])
    assert len(explained) == 2 and 0 < explained[1] <= explained[0] < 1


def test_too_few_vectors_for_tsne_are_refused_naming_the_numbers():
    with pytest.raises(TaskvecError, match=r"perplexity 30: 2 tasks x 10 vectors = 20"):
        check_sizes(2, 10, 30.0)
    with pytest.raises(TaskvecError, match="got 1 task, expected at least 2"):
        check_sizes(1, 50, 30.0)
    with pytest.raises(TaskvecError, match="n-vectors must be at least 2"):
        check_sizes(3, 1, 0.5)
    check_sizes(2, 16, 30.0)


def test_robustness_end_to_end(tmp_path):
    lm = make_tiny_model("gpt_neox")
    tasks = ("next_letter", "to_upper", "list_first")
    config = RobustnessConfig(tasks=tasks, n_vectors=6, perplexity=5.0, layers=LayerOptions(n_dev=4))
    results, vectors, metadata = run_robustness(config, lm=lm)
    assert vectors.shape == (18, 32)
    assert metadata["tasks"] == [t for t in tasks for _ in range(6)]
    assert len(results["points"]["tsne"]) == len(results["points"]["pca"]) == 18
    assert set(results["tasks"]) == set(tasks)
    assert all(t["source"] == "sweep" and 0 <= t["layer"] < lm.num_layers for t in results["tasks"].values())
    assert -1 <= results["silhouette"]["task"] <= 1
    assert results["silhouette"]["category"] is None  # all three are algorithmic
    paths = write_robustness(tmp_path, results, vectors, metadata)
    loaded, meta = load_vectors(paths["vectors"])
    assert torch.equal(loaded, vectors) and meta["tasks"] == metadata["tasks"]
    points = json.loads(paths["points"].read_text())
    assert len(points["tsne"]) == len(points["task"]) == 18 and "points" not in json.loads(paths["json"].read_text())
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 4
    assert len(results["pca_explained_variance"]) == 2
    assert "only one of its category" not in html  # three algorithmic tasks: the groupings differ
    assert {p.name for p in tmp_path.glob("*.png")} == {"tsne_task.png", "tsne_category.png", "pca_task.png",
                                                        "distances.png"}  # fmt: skip
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_report_says_why_category_and_task_silhouettes_are_equal():
    from taskvec.report.analysis_render import robustness_blocks

    own = {"silhouette": {"task": 0.5, "category": 0.5},
           "tasks": {"a": {"category": "algorithmic"}, "b": {"category": "knowledge"}}}  # fmt: skip
    shared = {"silhouette": {"task": 0.5, "category": None},
              "tasks": {"a": {"category": "algorithmic"}, "b": {"category": "algorithmic"}}}  # fmt: skip
    assert any("only one of its category" in str(b) for b in robustness_blocks(own))
    assert not any("only one of its category" in str(b) for b in robustness_blocks(shared))


def test_layers_from_a_run_must_match_the_model(tmp_path):
    lm = make_tiny_model("llama")
    run = {"model": {"id": lm.model_id, "num_layers": lm.num_layers}, "tasks": {"to_upper": {"best_layer": 2}}}
    (tmp_path / "results.json").write_text(json.dumps(run))
    assert layers_from_run(tmp_path, lm, ["to_upper"]) == {"to_upper": 2}
    with pytest.raises(TaskvecError, match=r"no best layer for task.*next_letter"):
        layers_from_run(tmp_path, lm, ["next_letter"])
    run["model"]["id"] = "other"
    (tmp_path / "results.json").write_text(json.dumps(run))
    with pytest.raises(TaskvecError, match="run of 'other'"):
        layers_from_run(tmp_path, lm, ["to_upper"])
    with pytest.raises(TaskvecError, match="not a taskvec run"):
        layers_from_run(tmp_path / "missing", lm, ["to_upper"])


# --- command line: bad input is refused before a model is loaded ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["conflict", "--pairs", "next_letter:nope"], "unknown task 'nope'"),
        (["conflict", "--pairs", "next_letter"], "form A:B"),
        (["robustness", "--tasks", "to_upper"], "got 1 task"),
        (["robustness", "--tasks", "to_upper", "to_lower", "--n-vectors", "10"], "perplexity 30: 2 tasks x 10"),
        (["robustness", "--tasks", "nope,to_upper"], "unknown task 'nope'"),
        (["interpret", "--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
