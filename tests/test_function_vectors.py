"""Head sites, head reads/edits as sites, attribution (AIE) and function vectors on tiny random models."""

from __future__ import annotations

import random
import string

import pytest
import torch
from tiny_models import FAMILIES, VOCAB, VOCAB_SIZE, make_tiny_model, make_tokenizer
from transformers import Gemma2Config, Gemma2ForCausalLM

from taskvec.core.methods.function_vector import FunctionVectorMethod
from taskvec.core.sites import Add, Replace, Site
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.interventions import intervene
from taskvec.engine.reading import read_sites
from taskvec.errors import TaskvecError
from taskvec.heads import (
    apply_function_vector,
    average_aie,
    function_vector,
    head_attribution,
    head_sites,
    random_like,
    sample_icl_examples,
    select_function_vector,
    shuffled_examples,
    top_heads,
)
from taskvec.heads.attribution import attention_output, head_site_list, mean_head_outputs
from taskvec.heads.examples import IclExample, first_answer_tokens, shuffle_labels
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.head_sites import HeadSiteError, check_rms_type, frozen_norm, rms
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import MixedLinear, enable_mixed_precision
from taskvec.prompts import DEFAULT_TEMPLATE
from taskvec.runtime import make_executor

pytestmark = pytest.mark.usefixtures("single_thread")

PAIRS = [(c, c.upper()) for c in string.ascii_lowercase]
PROJECTION_NAME = {"llama": "o_proj", "qwen2": "o_proj", "gemma3": "o_proj", "gpt2": "c_proj",
                   "gpt_neox": "dense", "gptj": "out_proj"}  # fmt: skip
PROMPTS = ["example:a->A\nexample:b->B\nexample:c->", "example:q->Q\nexample:r->"]


@pytest.fixture(scope="module", params=FAMILIES, ids=FAMILIES)
def family_lm(request):
    return request.param, make_tiny_model(request.param)


def _full_forward(lm, prompts, patches=(), additions=None):
    """Logits of ``prompts`` run whole; ``patches``: (row, layer, head, value) head replacements at the last token;
    ``additions``: {layer: vector} added to block outputs at the last token of every row."""
    edits = [[Add(Site(layer), v) for layer, v in (additions or {}).items()] for _ in prompts]
    for row, layer, head, value in patches:
        edits[row].append(Replace(Site(layer, head=head), value))
    batch = collate(lm, encode(lm, prompts))
    with intervene(lm.adapter, edits):
        return next_token_logits(lm, batch)


def _head_outputs(lm, prompts) -> dict[int, torch.Tensor]:
    """{layer: (len(prompts), n_heads, head_dim)} every head's output at the last token (read as sites)."""
    read = read_sites(lm, prompts, head_site_list(lm))
    return {s.layer: torch.stack([read[Site(s.layer, head=j)] for j in range(s.n_heads)], 1) for s in head_sites(lm)}


def _executor(lm, kind="fast"):
    return make_executor(lm, kind, 4)


def test_sites_found_from_structure(family_lm):
    family, lm = family_lm
    sites = head_sites(lm)
    assert len(sites) == lm.num_layers
    for site in sites:
        name = next(n for n, m in site.attention.named_children() if m is site.out_proj)
        assert name == PROJECTION_NAME[family]
        assert site.n_heads == 4 and site.n_heads * site.head_dim == (8 * 4 if family == "gemma3" else 32)
        # Only gemma3 puts a norm between the attention output and the residual add (llama/qwen2's
        # post_attention_layernorm is their pre-MLP norm and must not be taken for one).
        assert (site.post_norm is not None) == (family == "gemma3")
        if site.post_norm is not None:
            assert site.post_norm is lm.adapter.layers[site.layer].post_attention_layernorm


def test_projected_heads_sum_to_attention_output(family_lm):
    _, lm = family_lm
    sites = head_sites(lm)
    outputs: dict[int, torch.Tensor] = {}
    handles = [s.out_proj.register_forward_hook(lambda m, a, o, i=s.layer: outputs.__setitem__(i, o[:, -1].detach()))
               for s in sites]  # fmt: skip
    try:
        _full_forward(lm, PROMPTS)
    finally:
        for h in handles:
            h.remove()
    store = _head_outputs(lm, PROMPTS)
    for site in sites:
        assert store[site.layer].shape == (2, site.n_heads, site.head_dim)
        torch.testing.assert_close(attention_output(site, store[site.layer]), outputs[site.layer], rtol=1e-5, atol=1e-5)
        per_head = torch.stack([store[site.layer][:, j] @ site.head_weight(j) for j in range(site.n_heads)], 1)
        torch.testing.assert_close(per_head, site.project(store[site.layer]), rtol=1e-5, atol=1e-6)


def test_patching_heads_with_their_own_outputs_changes_nothing(family_lm):
    _, lm = family_lm
    sites = head_sites(lm)
    clean = _full_forward(lm, PROMPTS)
    store = _head_outputs(lm, PROMPTS)
    own = [(0, 0, 1, store[0][0, 1]), (1, lm.num_layers - 1, 3, store[lm.num_layers - 1][1, 3]),
           (1, 1, 0, store[1][1, 0])]  # fmt: skip
    assert torch.equal(_full_forward(lm, PROMPTS, own), clean)
    other = [(0, 1, 2, store[1][0, 2] + 3.0)]
    changed = _full_forward(lm, PROMPTS, other)
    assert not torch.equal(changed[0], clean[0]) and torch.equal(changed[1], clean[1])
    assert all(not s.out_proj._forward_pre_hooks for s in sites)


def test_hooks_removed_on_error():
    lm = make_tiny_model("gpt2")
    sites = head_sites(lm)
    # transformers may keep hooks of its own on the blocks (output capturing): "none of ours left" = as before
    before = ([list(s.out_proj._forward_pre_hooks) for s in sites], [list(b._forward_hooks) for b in lm.adapter.layers])
    head_edit = [[Replace(Site(0, head=0), torch.zeros(sites[0].head_dim)), Add(Site(0), torch.zeros(32))]]
    with pytest.raises(RuntimeError), intervene(lm.adapter, head_edit):
        raise RuntimeError("boom")
    after = ([list(s.out_proj._forward_pre_hooks) for s in sites], [list(b._forward_hooks) for b in lm.adapter.layers])
    assert after == before


def test_cached_last_token_probabilities_equal_full_forwards(family_lm):
    _, lm = family_lm
    sites = head_sites(lm)
    gold = [5, 9]
    values = torch.randn(len(sites), sites[0].n_heads, sites[0].head_dim, generator=torch.Generator().manual_seed(1))
    heads = [(0, 0), (1, 3), (lm.num_layers - 1, 2)]
    variants = [[]] + [[Replace(Site(li, head=j), values[li, j])] for li, j in heads]
    fast = make_executor(lm, "fast", 1)  # 4 rows per forward: several chunks
    cached = fast.last_token(PROMPTS, variants, gold=gold).logprobs.exp()
    assert fast.shortcuts.last_token  # the last chunk (a top-layer head) skipped the blocks below it
    plain = _executor(lm, "plain").last_token(PROMPTS, variants, gold=gold).logprobs.exp()
    torch.testing.assert_close(cached, plain, rtol=1e-5, atol=1e-7)
    for c, head in enumerate([None, *heads]):
        patches = [] if head is None else [(r, *head, values[head]) for r in range(2)]
        full = torch.softmax(_full_forward(lm, PROMPTS, patches), -1)[torch.arange(2), torch.tensor(gold)]
        torch.testing.assert_close(cached[c], full, rtol=1e-5, atol=1e-7)


def test_post_attention_norm_folded_in_exactly_at_its_own_scale():
    lm = make_tiny_model("gemma3")
    sites = head_sites(lm)
    normed: dict[int, torch.Tensor] = {}
    handles = [s.post_norm.register_forward_hook(lambda m, a, o, i=s.layer: normed.__setitem__(i, o[:, -1].detach()))
               for s in sites]  # fmt: skip
    try:
        _full_forward(lm, PROMPTS[:1])
    finally:
        for h in handles:
            h.remove()
    store = _head_outputs(lm, PROMPTS[:1])
    for site in sites:
        a = attention_output(site, store[site.layer])  # (1, H)
        own_rms = rms(a, 1e-6)
        summed = frozen_norm(site.post_norm, site.project(store[site.layer])[0], own_rms[0]).sum(0)
        torch.testing.assert_close(summed, normed[site.layer][0], rtol=1e-4, atol=1e-5)


def test_shuffled_labels_move_and_are_seeded():
    examples = sample_icl_examples(PAIRS, 5, 4, seed=3)
    assert examples == sample_icl_examples(PAIRS, 5, 4, seed=3)
    for e in examples:
        assert e.query not in [x for x, _ in e.demonstrations]
    shuffled = shuffled_examples(examples, seed=0)
    assert shuffled == shuffled_examples(examples, seed=0)
    for e, s in zip(examples, shuffled):
        assert [x for x, _ in s.demonstrations] == [x for x, _ in e.demonstrations]
        assert sorted(y for _, y in s.demonstrations) == sorted(y for _, y in e.demonstrations)
        assert all(a[1] != b[1] for a, b in zip(e.demonstrations, s.demonstrations))
    twins = IclExample((("a", "X"), ("b", "X"), ("c", "Y")), "d", "D")
    assert shuffle_labels(twins, random.Random(0)).demonstrations != twins.demonstrations
    with pytest.raises(TaskvecError, match="all equal"):
        shuffle_labels(IclExample((("a", "X"), ("b", "X")), "d", "D"), random.Random(0))
    with pytest.raises(TaskvecError, match="n_shots"):
        sample_icl_examples(PAIRS, 2, 1)


def test_one_recipe_pairs_each_corrupted_prompt_with_a_clean_one(tmp_path):
    """run, heads and extract take their corrupted prompts the same way: the first n clean examples with their
    labels shuffled (same queries, inputs and label multiset); a heads directory of the earlier recipe (drawn
    afresh; its configuration has no "corrupted") is refused rather than resumed with mixed recipes."""
    import json

    from taskvec.experiments.heads_run import HeadsConfig, run_heads
    from taskvec.heads import attribution_examples

    clean = sample_icl_examples(PAIRS, 6, 4, seed=3)
    kept, corrupted = attribution_examples(clean, 4, random.Random(0))
    assert kept == clean and len(corrupted) == 4
    for e, c in zip(clean, corrupted):
        assert (e.query, e.answer) == (c.query, c.answer)
        assert [x for x, _ in c.demonstrations] == [x for x, _ in e.demonstrations]
        assert c.demonstrations != e.demonstrations
    assert attribution_examples(clean, 4, random.Random(0)) == (kept, corrupted)
    with pytest.raises(TaskvecError, match="n_corrupted=0"):
        attribution_examples(clean, 0, random.Random(0))
    config = HeadsConfig(model="tiny", tasks=("to_upper",), n_prompts=3, shots=3)
    assert config.to_dict()["corrupted"] == "clean shuffled"
    run_heads(config, tmp_path, lm=make_tiny_model("llama"))
    record = json.loads((tmp_path / "run-config.json").read_text())
    del record["corrupted"]  # as written by the earlier recipe
    (tmp_path / "run-config.json").write_text(json.dumps(record))
    with pytest.raises(TaskvecError, match="corrupted"):
        run_heads(config, tmp_path, lm=make_tiny_model("llama"))


def test_head_attribution_matches_its_probabilities():
    lm = make_tiny_model("llama")
    clean = sample_icl_examples(PAIRS, 4, 3, seed=0)
    corrupted = shuffled_examples(sample_icl_examples(PAIRS, 3, 3, seed=1), seed=2)
    heads = [(0, 1), (2, 3), (1, 0)]
    att = head_attribution(_executor(lm), clean, corrupted, DEFAULT_TEMPLATE, heads=heads)
    assert att.aie.shape == (3, 4) and att.n_corrupted == 3 and att.mean_outputs.n_prompts == 4
    gold = first_answer_tokens(lm, DEFAULT_TEMPLATE, corrupted)
    assert gold == [VOCAB[e.answer] for e in corrupted]  # one character, one token
    means = att.mean_outputs.means
    for layer, head in heads:
        prompts = [e.prompt(DEFAULT_TEMPLATE) for e in corrupted]
        patched = [(r, layer, head, means[layer, head]) for r in range(len(prompts))]
        rows = torch.arange(len(prompts)), torch.tensor(gold)
        before = torch.softmax(_full_forward(lm, prompts), -1)[rows]
        rise = torch.softmax(_full_forward(lm, prompts, patched), -1)[rows] - before
        assert float(att.aie[layer, head]) == pytest.approx(float(rise.mean()), abs=1e-6)
    untested = torch.ones(3, 4, dtype=torch.bool)
    for layer, head in heads:
        untested[layer, head] = False
    assert torch.all(torch.isnan(att.aie[untested]))
    assert att.to_dict()["aie"][0][0] is None
    means = mean_head_outputs(_executor(lm, "plain"), [e.prompt(DEFAULT_TEMPLATE) for e in clean])
    torch.testing.assert_close(means.means, att.mean_outputs.means)
    plain = head_attribution(_executor(lm, "plain"), clean, corrupted, DEFAULT_TEMPLATE, heads=heads)
    torch.testing.assert_close(plain.aie, att.aie, equal_nan=True, rtol=1e-5, atol=1e-7)
    assert top_heads(att.aie, 1)[0] == max(heads, key=lambda h: float(att.aie[h]))
    torch.testing.assert_close(average_aie([att, att]), att.aie, equal_nan=True)
    with pytest.raises(TaskvecError, match=r"head \(3, 0\)"):
        head_attribution(_executor(lm), clean, corrupted, DEFAULT_TEMPLATE, heads=[(3, 0)])
    with pytest.raises(TaskvecError, match="k=4"):
        top_heads(att.aie, 4)


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_function_vector_build_apply_and_select(family):
    lm = make_tiny_model(family)
    clean = sample_icl_examples(PAIRS, 3, 3, seed=0)
    corrupted = shuffled_examples(sample_icl_examples(PAIRS, 2, 3, seed=1), seed=2)
    executor = _executor(lm)
    att = head_attribution(executor, clean, corrupted, DEFAULT_TEMPLATE)
    fv = function_vector(lm, att, 3, DEFAULT_TEMPLATE)
    assert fv.k == 3 and fv.heads == att.top_heads(3) and fv.norm_corrected == (family == "gemma3")
    # the same vector as the method makes from the clean prompts themselves (one definition)
    method = FunctionVectorMethod(fv.heads, att.mean_outputs.attention_rms)
    made = method.from_prompts(executor, [[e.prompt(DEFAULT_TEMPLATE) for e in clean]])[0]
    torch.testing.assert_close(fv.vector, made, rtol=1e-5, atol=1e-6)
    if family == "gpt2":  # no post-norm: plain W_O,lj · ā_lj
        sites = head_sites(lm)
        plain = sum(att.mean_outputs.means[l_, j] @ sites[l_].head_weight(j) for l_, j in fv.heads)
        torch.testing.assert_close(fv.vector, plain)
    queries = ["d", "k", "x"]
    plain_ids = next_token_logits(lm, collate(lm, encode(lm, [DEFAULT_TEMPLATE.query_prompt(q) for q in queries])))
    zero = apply_function_vector(executor, fv, queries, layer=1, scale=0.0)
    assert zero == [lm.tokenizer.decode([int(t)]).split("\n")[0].strip() for t in plain_ids.argmax(-1)]
    # The cached grid evaluation gives the same tokens as full forwards with the vector added.
    prompts = [DEFAULT_TEMPLATE.query_prompt(q) for q in queries]
    added = [(0, 5.0 * fv.vector), (1, 20.0 * fv.vector), (lm.num_layers - 1, -8.0 * fv.vector)]
    cached = make_executor(lm, "fast", 1).last_token(prompts, [[Add(Site(li), v)] for li, v in added]).ids
    for v, (layer, vector) in enumerate(added):
        full = _full_forward(lm, prompts, additions={layer: vector}).argmax(-1)
        assert torch.equal(cached[v], full)
    answers = ["D", "K", "X"]
    chosen = select_function_vector(executor, att, DEFAULT_TEMPLATE, queries, answers, ks=(1, 3), scales=(1.0, 8.0))
    same = select_function_vector(_executor(lm, "plain"), att, DEFAULT_TEMPLATE, queries, answers, ks=(1, 3),
                                  scales=(1.0, 8.0))  # fmt: skip
    assert same.selection == chosen.selection
    grid = chosen.selection["grid"]
    assert len(grid) == lm.num_layers * 2 * 2
    best = max(g["dev_accuracy"] for g in grid)
    first = next(g for g in grid if g["dev_accuracy"] == best)
    assert (chosen.layer, chosen.k, chosen.scale) == (first["layer"], first["k"], first["scale"])
    assert chosen.selection["none_worked"] == (best == 0)  # flagged when no configuration answered anything
    predictions = apply_function_vector(executor, chosen, queries)
    assert sum(p == a for p, a in zip(predictions, answers)) / 3 == pytest.approx(best)
    control = random_like(chosen, seed=1)
    assert float(control.vector.norm()) == pytest.approx(float(chosen.vector.norm()), rel=1e-5)
    assert chosen.to_dict()["k"] == chosen.k
    with pytest.raises(TaskvecError, match="answers"):
        select_function_vector(executor, att, DEFAULT_TEMPLATE, queries, answers[:2])
    with pytest.raises(TaskvecError, match="layer 99"):
        apply_function_vector(executor, fv, queries, layer=99)
    with pytest.raises(TaskvecError, match="no layer"):
        apply_function_vector(executor, fv, queries)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox"])
def test_sdpa_attention_same_sites_and_exact_own_patch(family):
    lm = make_tiny_model(family, attn="sdpa")
    sites = head_sites(lm)
    assert [type(s.out_proj) for s in sites] == [type(s.out_proj) for s in head_sites(make_tiny_model(family))]
    clean = _full_forward(lm, PROMPTS)
    store = _head_outputs(lm, PROMPTS)
    own = [(r, s.layer, j, store[s.layer][r, j]) for s in sites for j in range(s.n_heads) for r in (0, 1)]
    assert torch.equal(_full_forward(lm, PROMPTS, own), clean)


def test_sites_under_mixed_precision():
    lm = make_tiny_model("qwen2", seed=7)  # its own instance: mixed precision changes the modules
    enable_mixed_precision(lm.adapter.layers)
    sites = head_sites(lm)
    assert all(isinstance(s.out_proj, MixedLinear) for s in sites)
    outputs: dict[int, torch.Tensor] = {}
    handles = [s.out_proj.register_forward_hook(lambda m, a, o, i=s.layer: outputs.__setitem__(i, o[:, -1].detach()))
               for s in sites]  # fmt: skip
    try:
        _full_forward(lm, PROMPTS)
    finally:
        for h in handles:
            h.remove()
    store = _head_outputs(lm, PROMPTS)
    for site in sites:  # bfloat16 products in the model, float32 here
        torch.testing.assert_close(attention_output(site, store[site.layer]), outputs[site.layer], rtol=0.05, atol=0.05)


def test_frozen_norm_needs_an_rms_type_norm():
    rms_norm = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        rms_norm.weight.uniform_(0.5, 2.0)
    check_rms_type(rms_norm, 16, 0)
    x = torch.randn(16)
    torch.testing.assert_close(frozen_norm(rms_norm, x, 2.0), rms_norm.weight.detach() * x / 2.0, rtol=1e-4, atol=1e-5)
    with pytest.raises(HeadSiteError, match="not an RMS-type norm"):
        check_rms_type(torch.nn.LayerNorm(16), 16, 3)


def test_bad_inputs_name_the_value():
    lm = make_tiny_model("llama")
    with pytest.raises(TaskvecError, match="3 pairs cannot give 4 demonstrations"):
        sample_icl_examples(PAIRS[:3], 1, 4)
    with pytest.raises(TaskvecError, match="n_examples=0"):
        sample_icl_examples(PAIRS, 0, 2)
    with pytest.raises(TaskvecError, match="answer ''"):
        first_answer_tokens(lm, DEFAULT_TEMPLATE, [IclExample((("a", "A"), ("b", "B")), "c", "")])
    with pytest.raises(TaskvecError, match="no corrupted prompts"):
        head_attribution(_executor(lm), sample_icl_examples(PAIRS, 1, 2), [], DEFAULT_TEMPLATE)
    with pytest.raises(TaskvecError, match="cannot be averaged"):
        average_aie([_fake(torch.zeros(2, 2)), _fake(torch.zeros(3, 2))])


def _fake(aie: torch.Tensor):
    return type("A", (), {"aie": aie})()


def _tiny_gemma2() -> LoadedModel:
    """A tiny random Gemma-2 (not in tiny_models: only this file needs it)."""
    config = Gemma2Config(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                          sliding_window=4, max_position_embeddings=256, initializer_range=0.2,
                          attn_implementation="eager", pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    tokenizer = make_tokenizer(with_bos=True)
    return LoadedModel(model, tokenizer, ArchitectureAdapter.from_model(model, tokenizer), "tiny-gemma2")


def test_gemma2_post_attention_norm_found_and_own_patch_exact():
    lm = _tiny_gemma2()
    sites = head_sites(lm)
    assert [s.post_norm for s in sites] == [b.post_attention_layernorm for b in lm.adapter.layers]
    clean = _full_forward(lm, PROMPTS)
    store = _head_outputs(lm, PROMPTS)
    own = [(r, s.layer, j, store[s.layer][r, j]) for s in sites for j in range(s.n_heads) for r in (0, 1)]
    assert torch.equal(_full_forward(lm, PROMPTS, own), clean)
    att = head_attribution(_executor(lm), sample_icl_examples(PAIRS, 2, 3),
                           shuffled_examples(sample_icl_examples(PAIRS, 2, 3, 1)), DEFAULT_TEMPLATE)  # fmt: skip
    assert function_vector(lm, att, 2, DEFAULT_TEMPLATE).norm_corrected


def test_post_norm_folded_in_for_a_bfloat16_model():
    """A whole-bfloat16 gemma3 rounds the norm's output: the RMS-type check must not mistake that for a
    non-linear norm (it did, on the GPU check of a bfloat16 model)."""
    import copy

    from taskvec.models.head_sites import check_rms_type

    lm = make_tiny_model("gemma3")
    norm = copy.deepcopy(head_sites(lm)[0].post_norm).to(torch.bfloat16)
    check_rms_type(norm, norm.weight.shape[-1], 0)  # no error
    layer_norm = torch.nn.LayerNorm(norm.weight.shape[-1]).to(torch.bfloat16)
    with torch.no_grad():
        layer_norm.bias.fill_(0.5)
    with pytest.raises(TaskvecError, match="not an RMS-type norm"):
        check_rms_type(layer_norm, norm.weight.shape[-1], 0)


def test_refined_search_scores_a_subset_and_keeps_the_tie_rule():
    lm = make_tiny_model("llama")
    clean = sample_icl_examples(PAIRS, 3, 3, seed=0)
    executor = _executor(lm)
    corrupted = shuffled_examples(sample_icl_examples(PAIRS, 2, 3, seed=1))
    att = head_attribution(executor, clean, corrupted, DEFAULT_TEMPLATE)
    queries, answers = ["d", "k", "x"], ["D", "K", "X"]
    full = select_function_vector(executor, att, DEFAULT_TEMPLATE, queries, answers, ks=(1, 3), scales=(1.0, 2.0, 8.0))
    fine = select_function_vector(executor, att, DEFAULT_TEMPLATE, queries, answers, ks=(1, 3), scales=(1.0, 2.0, 8.0),
                                  refine_layers=1)  # fmt: skip
    by_config = {(g["layer"], g["k"], g["scale"]): g["dev_accuracy"] for g in full.selection["grid"]}
    scored = fine.selection["grid"]
    # every layer with every k at the middle scale (2.0), then the best layer with everything
    assert len(scored) == lm.num_layers * 2 + 2 * 2 and fine.selection["search"] == "refine 1"
    assert all(by_config[(g["layer"], g["k"], g["scale"])] == g["dev_accuracy"] for g in scored)
    best = max(g["dev_accuracy"] for g in scored)
    first = next(g for g in scored if g["dev_accuracy"] == best)
    assert (fine.layer, fine.k, fine.scale) == (first["layer"], first["k"], first["scale"])


def test_gradient_attribution_is_the_linear_estimate_of_the_exact_one():
    """``attribution="gradient"``: the table is attribution patching's estimate (engine.gradients), for the
    heads asked only; with the clean means moved close to the corrupted prompts' own head outputs, the linear
    estimate and the exact patched effect agree (the estimate is exact to first order)."""
    from taskvec.engine.gradients import gradient_aie

    lm = make_tiny_model("llama")
    executor = _executor(lm)
    clean = sample_icl_examples(PAIRS, 4, 3, seed=0)
    corrupted = shuffled_examples(sample_icl_examples(PAIRS, 3, 3, seed=1), seed=2)
    heads = [(0, 1), (2, 3), (1, 0)]
    att = head_attribution(executor, clean, corrupted, DEFAULT_TEMPLATE, heads=heads, attribution="gradient")
    assert att.method == "gradient" and att.to_dict()["method"] == "gradient"
    prompts = [e.prompt(DEFAULT_TEMPLATE) for e in corrupted]
    gold = first_answer_tokens(lm, DEFAULT_TEMPLATE, corrupted)
    estimate, probabilities = gradient_aie(lm, prompts, gold, att.mean_outputs.means)
    for li, j in heads:
        assert float(att.aie[li, j]) == pytest.approx(float(estimate[li, j]), abs=1e-7)
    assert int((~torch.isnan(att.aie)).sum()) == 3
    assert att.baseline_probability == pytest.approx(float(probabilities.mean()), rel=1e-5)
    # near the corrupted prompts' own outputs, exact and gradient agree: means = own + 1% of (clean - own)
    own = _head_outputs(lm, prompts)
    for li, j in heads:
        near = own[li][:, j] + 0.01 * (att.mean_outputs.means[li, j] - own[li][:, j])
        rows = torch.arange(len(prompts)), torch.tensor(gold)
        before = torch.softmax(_full_forward(lm, prompts), -1)[rows]
        after = torch.softmax(_full_forward(lm, prompts, [(r, li, j, near[r]) for r in range(len(prompts))]), -1)
        exact = float((after[rows] - before).mean())
        assert exact == pytest.approx(0.01 * float(att.aie[li, j]), rel=0.05, abs=1e-8)
    with pytest.raises(TaskvecError, match="attribution 'fast'"):
        head_attribution(executor, clean, corrupted, DEFAULT_TEMPLATE, attribution="fast")
