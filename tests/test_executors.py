"""Every experiment under both executors: the plain one (every prompt whole, the reference) and the fast one
(shared prefixes, cached sweep, vocabulary shortlist) give identical float32 predictions, on tiny models of
all six families. Also: interventions as data (sites, replace / add / read, head sites) and the method
registry."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, make_tiny_model

from taskvec.core.interfaces import Executor
from taskvec.core.methods import ALIASES, METHODS, TASK_VECTOR, TaskVectorMethod, get_method
from taskvec.core.sites import Add, Read, Replace, Site
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.interventions import intervene
from taskvec.errors import TaskvecError
from taskvec.experiments.analysis_setup import LayerOptions
from taskvec.experiments.conflict import ConflictConfig, run_conflict
from taskvec.experiments.extract import ExtractConfig, extract_for_task
from taskvec.experiments.interpret import InterpretConfig, run_interpret
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.experiments.multitoken import MultiTokenConfig, evaluate_multitoken
from taskvec.experiments.robustness import RobustnessConfig, run_robustness
from taskvec.heads import head_attribution, sample_icl_examples, select_function_vector, shuffled_examples
from taskvec.models.head_sites import head_sites
from taskvec.prompts import DEFAULT_TEMPLATE
from taskvec.runtime import FastExecutor, PlainExecutor, make_executor
from taskvec.tasks import builtin_task, prepare_task

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["example:abc->", "example:hello->", "example:x->"]


def both(lm, batch_size: int = 4) -> tuple[Executor, Executor]:
    return make_executor(lm, "plain", batch_size), make_executor(lm, "fast", batch_size)


def without_seconds(value):
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k not in ("seconds", "timing", "created")}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


@pytest.mark.parametrize("family", FAMILIES)
def test_main_experiment_same_under_both_executors(family):
    lm = make_tiny_model(family)
    config = MainConfig(model="tiny", n_dev=5, n_test=4, n_baseline=5, seed=3, batch_size=4)
    prepared = prepare_task(lm, builtin_task("to_upper"))
    plain, fast = (evaluate_task(lm, prepared, config, executor=e) for e in both(lm))
    assert plain[1] == fast[1]  # every row: prompt, layer, prediction, correctness
    assert without_seconds(plain[0]) == without_seconds(fast[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_function_vector_same_under_both_executors(family):
    """Head attribution (one last-token variant per head, scored by p(gold)) and the function vector's dev grid
    (one variant per (layer, k, scale), scored by the argmax): the fast executor's cached last-token path gives
    the plain executor's answers; and a whole tv,fv run with its controls is the same under both."""
    lm = make_tiny_model(family)
    pairs = [(c, c.upper()) for c in "abcdefghijklmnop"]
    clean = sample_icl_examples(pairs, 3, 3, seed=0)
    corrupted = shuffled_examples(sample_icl_examples(pairs, 3, 3, seed=1), seed=2)
    plain, fast = both(lm)
    template = DEFAULT_TEMPLATE
    by_plain = head_attribution(plain, clean, corrupted, template)
    by_fast = head_attribution(fast, clean, corrupted, template)
    torch.testing.assert_close(by_fast.aie, by_plain.aie, rtol=1e-5, atol=1e-7)
    assert by_fast.top_heads(5) == by_plain.top_heads(5)
    queries, answers = list("qrs"), list("QRS")
    chosen = [select_function_vector(e, by_plain, template, queries, answers, ks=(1, 3), scales=(1.0, 8.0))
              for e in (plain, fast)]  # fmt: skip
    assert chosen[0].selection == chosen[1].selection
    config = MainConfig(model="tiny", n_dev=4, n_test=4, n_baseline=4, seed=3, batch_size=4,
                        methods=("task_vector", "function_vector"), fv={"n_corrupted": 3, "ks": [1, 2]})  # fmt: skip
    prepared = prepare_task(lm, builtin_task("to_upper"))
    runs = [evaluate_task(lm, prepared, config, executor=e) for e in both(lm)]
    assert runs[0][1] == runs[1][1]
    # the attribution's probabilities come from a cached last token in one and whole prompts in the other:
    # equal to float32 rounding (every choice made from them is compared exactly above and below)
    found = [without_seconds(r[0]) for r in runs]
    tables = [r["function_vector"].pop("attribution") for r in found]
    assert found[0] == found[1]
    assert tables[0]["baseline_probability"] == pytest.approx(tables[1]["baseline_probability"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(tables[0]["aie"]), torch.tensor(tables[1]["aie"]), rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_multitoken_same_under_both_executors(family):
    lm = make_tiny_model(family)
    config = MultiTokenConfig(n_dev=3, n_test=3, max_new_tokens=3, batch_size=4)
    task = builtin_task("to_upper")
    plain, fast = (evaluate_multitoken(lm, task, config, executor=e) for e in both(lm))
    assert plain == fast


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_same_under_both_executors(family):
    lm = make_tiny_model(family)
    config = ExtractConfig(n_sets=2, n_dev=5)
    plain, fast = (extract_for_task(lm, builtin_task("to_upper"), config, executor=e) for e in both(lm, 32))
    assert plain.layer == fast.layer
    assert plain.metadata["dev_accuracy_by_layer"] == fast.metadata["dev_accuracy_by_layer"]
    torch.testing.assert_close(plain.vectors, fast.vectors, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_analyses_same_under_both_executors(family):
    lm = make_tiny_model(family)
    conflict = ConflictConfig(pairs=(("next_letter", "to_upper"),), n_sets=4, min_queries=4,
                              layers=LayerOptions(n_dev=3), batch_size=4)  # fmt: skip
    plain, fast = (run_conflict(conflict, executor=e) for e in both(lm))
    assert plain[1] == fast[1] and without_seconds(plain[0]) == without_seconds(fast[0])

    interpret = InterpretConfig(tasks=("to_upper",), n_sets=3, n_single=1, top_k=4, layers=LayerOptions(n_dev=3),
                                batch_size=4)  # fmt: skip
    plain, fast = (run_interpret(interpret, executor=e) for e in both(lm))
    tokens = [[t["token"] for t in e["by_layer"][str(e["best_layer"])]["mean"]] for e in (plain["tasks"]["to_upper"],
              fast["tasks"]["to_upper"])]  # fmt: skip
    assert plain["tasks"]["to_upper"]["best_layer"] == fast["tasks"]["to_upper"]["best_layer"]
    assert tokens[0] == tokens[1]

    robustness = RobustnessConfig(tasks=("next_letter", "to_upper"), n_vectors=3, perplexity=2.0,
                                  layers=LayerOptions(n_dev=3), batch_size=4)  # fmt: skip
    (plain, plain_vectors, plain_meta), (fast, fast_vectors, fast_meta) = (
        run_robustness(robustness, executor=e) for e in both(lm)
    )
    assert plain_meta["layers"] == fast_meta["layers"] and plain_meta["tasks"] == fast_meta["tasks"]
    torch.testing.assert_close(plain_vectors, fast_vectors, rtol=1e-5, atol=1e-5)


def test_executors_are_chosen_explicitly_and_keep_nothing_on_the_model():
    lm = make_tiny_model("llama")
    assert isinstance(make_executor(lm, "plain"), PlainExecutor)
    fast = make_executor(lm, "fast", 8)
    assert isinstance(fast, FastExecutor)
    with pytest.raises(TaskvecError, match="unknown executor 'turbo'"):
        make_executor(lm, "turbo")
    sized = fast.with_batch_size(2)
    assert sized.batch_size == 2 and sized.shortcuts is fast.shortcuts  # what was learned carries over
    assert not any(name.startswith("_taskvec") for m in lm.model.modules() for name in vars(m))
    assert not hasattr(lm.adapter, "fast_sweep_verified")


def test_method_registry():
    assert METHODS["task_vector"] is TASK_VECTOR and isinstance(get_method("task_vector"), TaskVectorMethod)
    assert {alias: type(get_method(alias)).name for alias in ALIASES} == ALIASES
    with pytest.raises(TaskvecError, match="unknown method 'nope'"):
        get_method("nope")
    (edit,) = TASK_VECTOR.edits(2, torch.ones(3))
    assert isinstance(edit, Replace) and edit.site == Site(2, -1, None)


# --- interventions as data ---------------------------------------------------------------------------


def logits_with(lm, edits=(), reads=(), store=None):
    batch = collate(lm, encode(lm, PROMPTS))
    with intervene(lm.adapter, edits, reads, store):
        return next_token_logits(lm, batch)


@pytest.mark.parametrize("family", FAMILIES)
def test_replace_and_add_at_block_sites(family):
    lm = make_tiny_model(family)
    hidden = lm.model.config.get_text_config().hidden_size
    store: dict = {}
    base = logits_with(lm, reads=[Read(Site(1))], store=store)
    read = store[Site(1)]
    assert read.shape == (len(PROMPTS), hidden)
    # Replacing a block output by itself, or adding zero, changes nothing.
    same = logits_with(lm, [Replace(Site(1), read[i]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(same, base)
    torch.testing.assert_close(logits_with(lm, [Add(Site(1), torch.zeros(hidden))] * len(PROMPTS)), base)
    # Adding v equals replacing by (read + v); only the edited row changes.
    v = torch.randn(hidden)
    added = logits_with(lm, [Add(Site(1), v), None, None])
    replaced = logits_with(lm, [Replace(Site(1), read[0] + v), None, None])
    torch.testing.assert_close(added, replaced, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(added[1:], base[1:])
    assert not torch.allclose(added[0], base[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_head_sites_are_slices_of_the_attention_output_projection_input(family):
    lm = make_tiny_model(family)
    heads = lm.adapter.num_heads
    store: dict = {}
    sites = [Site(0, head=h) for h in range(heads)]
    base = logits_with(lm, reads=[Read(s) for s in sites], store=store)
    captured: list[torch.Tensor] = []
    handle = head_sites(lm)[0].out_proj.register_forward_pre_hook(
        lambda module, args: captured.append(args[0][:, -1].detach())
    )
    try:
        logits_with(lm)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.cat([store[s] for s in sites], dim=-1), captured[0])
    size = captured[0].shape[-1] // heads
    torch.testing.assert_close(logits_with(lm, [Add(Site(0, head=1), torch.zeros(size))] * len(PROMPTS)), base)
    moved = logits_with(lm, [Add(Site(0, head=1), torch.full((size,), 3.0)), None, None])
    assert not torch.allclose(moved[0], base[0]) and torch.allclose(moved[1:], base[1:])


def test_site_checks():
    with pytest.raises(ValueError, match="non-negative integer"):
        Site(-1)
    with pytest.raises(ValueError, match="head must be"):
        Site(0, head=True)
    lm = make_tiny_model("gpt2")
    with pytest.raises(ValueError, match="out of range"):
        logits_with(lm, [Add(Site(0, head=99), torch.zeros(8))] * len(PROMPTS))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "gptj"])
def test_read_and_logprobs_for_the_next_methods(family):
    """What a function-vector method needs from an executor: head outputs and the probability of an answer."""
    lm = make_tiny_model(family)
    plain, fast = both(lm, 2)
    block, head = Site(1), Site(1, head=0)
    for executor in (plain, fast):
        found = executor.read(PROMPTS, [block, head])
        torch.testing.assert_close(found[block], executor.states([PROMPTS], [1])[:, 0])
        assert found[head].shape == (len(PROMPTS), found[block].shape[1] // 4 if family != "gemma3" else 8)
        ids = executor.predict(PROMPTS).ids
        logprobs = executor.logprobs(PROMPTS, ids.tolist())
        assert bool((logprobs <= 0).all())
        others = executor.logprobs(PROMPTS, ((ids + 1) % 50).tolist())
        assert bool((logprobs >= others).all())  # the predicted token is the most probable one
    edited = plain.read(PROMPTS, [Site(2)], [Replace(Site(1), torch.zeros(found[block].shape[1]))] * len(PROMPTS))
    assert not torch.allclose(edited[Site(2)], plain.read(PROMPTS, [Site(2)])[Site(2)])


@pytest.mark.parametrize("family", FAMILIES)
def test_per_prompt_last_token_variants(family):
    """A PerPrompt variant (each prompt its own edits, e.g. each test set's task vector) on the cached last-token
    path gives what ``predict`` gives with those edits, under both executors; mixed with shared variants."""
    from taskvec.core.sites import PerPrompt

    lm = make_tiny_model(family)
    hidden = lm.model.config.get_text_config().hidden_size
    g = torch.Generator().manual_seed(4)
    own = [[Replace(Site(1), 5 * torch.randn(hidden, generator=g))] for _ in PROMPTS]
    own[1] = [Add(Site(lm.num_layers - 1), 5 * torch.randn(hidden, generator=g))]
    shared = [Add(Site(0), 5 * torch.randn(hidden, generator=g))]
    variants = [None, PerPrompt(tuple(own)), shared]
    for executor in both(lm, batch_size=1):
        ids = executor.last_token(PROMPTS, variants).ids
        assert torch.equal(ids[0], executor.predict(PROMPTS).ids)
        assert torch.equal(ids[1], executor.predict(PROMPTS, own).ids)
        assert torch.equal(ids[2], executor.predict(PROMPTS, [shared] * len(PROMPTS)).ids)
    with pytest.raises(TaskvecError, match="2 rows of edits for 3 prompts"):
        both(lm)[1].last_token(PROMPTS, [PerPrompt(tuple(own[:2]))])
