"""Edits at any position (core/sites.py): a prompt token, every prompt token, every generated token, or all
of them; Replace, Add and In-Context Vectors' Steer. On tiny random models of all six families:

- sites refuse positions that are not a negative integer or a known name;
- every method (task vector, function vector, In-Context Vector, mean difference, ICL shift) gives the same
  float32 predictions, sweeps and generations under the plain and the fast executor;
- cached generation (edits at prompt positions made once in the prefill, edits at generated positions on
  each new token) equals running the whole sequence again for every token with the same edits;
- edits that should change nothing change nothing;
- ``TaskVector.applied`` edits every forward (and Hugging Face ``generate``) inside its block only;
- vector files of every method apply, sweep and round-trip as their method says, old files included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import FAMILIES, HIDDEN, PAD_ID, make_tiny_model

import taskvec
from taskvec.api.compat import model_metadata
from taskvec.api.task_vector import vectors_sha256
from taskvec.core.answering import step_edits, with_steps
from taskvec.core.decoding import StopRule, decode_predictions
from taskvec.core.methods import (
    TASK_VECTOR,
    FunctionVectorMethod,
    IclShiftMethod,
    InContextVectorMethod,
    MeanDifferenceMethod,
    acting_layers,
    edits_at,
    method_for,
)
from taskvec.core.sites import ALL, GENERATED, PROMPT, Add, Read, Replace, Site, Steer, row_edits
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.generation import generate_ids
from taskvec.engine.interventions import intervene
from taskvec.errors import TaskvecError, TaskVectorFileError
from taskvec.heads.attribution import mean_head_outputs
from taskvec.prompts import DEFAULT_TEMPLATE
from taskvec.runtime import make_executor

pytestmark = pytest.mark.usefixtures("single_thread")

#: Prompts of different lengths (one batch is left-padded).
PROMPTS = ["example:a->", "example:hello->", "example:xyz->", "example:qrstuvw->"]
NO_STOP = StopRule(eos=False, special=False, stop_strings=())
PAIRS = [(c, c.upper()) for c in "abcdefghijklmnopqrstuvwx"]
DEMOS = [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")]
QUERIES = ["e", "fg", "h", "xyz"]


@dataclass(frozen=True)
class Demos:
    """A demonstration set (what core/interfaces.DemoSet asks of one)."""

    demo_tuples: list[tuple[str, str]]
    dummies: tuple[str, ...]


#: One demonstration set per prompt: three demonstrations and two dummy queries each.
SETS = [Demos(PAIRS[6 * i : 6 * i + 3], (PAIRS[6 * i + 3][0], PAIRS[6 * i + 4][0])) for i in range(len(PROMPTS))]


def both(lm, batch_size: int = 3):
    return make_executor(lm, "plain", batch_size), make_executor(lm, "fast", batch_size)


def randn(*shape, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def methods(lm) -> dict:
    """One instance of every method, with settings that make its vector act visibly on a tiny model."""
    icl = [DEFAULT_TEMPLATE.icl_prompt(s.demo_tuples, d) for s in SETS for d in s.dummies]
    rms = mean_head_outputs(make_executor(lm, "plain", 4), icl).attention_rms
    last = lm.num_layers - 1
    return {
        "task_vector": TASK_VECTOR,
        "function_vector": FunctionVectorMethod([(0, 1), (1, 3), (last, 0)], rms, scale=3.0),
        "in_context_vector": InContextVectorMethod(strength=0.5),
        "mean_difference": MeanDifferenceMethod(scale=2.0, layers=[0, last]),
        "icl_shift": IclShiftMethod(scale=1.5),
    }


def logits_with(lm, edits=(), prompts=PROMPTS):
    batch = collate(lm, encode(lm, prompts))
    with intervene(lm.adapter, edits):
        return next_token_logits(lm, batch)


def hook_count(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


# --- a. sites ----------------------------------------------------------------------------------------


def test_site_positions_are_checked():
    for position in (-1, -7, PROMPT, GENERATED, ALL):
        assert Site(2, position).position == position
    assert Site(0).one_token and not Site(0).at_generated
    assert not Site(0, PROMPT).one_token and not Site(0, PROMPT).at_generated
    assert Site(0, GENERATED).at_generated and Site(0, ALL).at_generated and not Site(0, ALL).one_token
    for bad in (0, 1, 5, "middle", "last", "", True, False, 1.5, -1.0, None):
        with pytest.raises(ValueError, match="position"):
            Site(0, bad)
    with pytest.raises(ValueError, match="position"):
        Steer(Site(1, "everywhere"), torch.zeros(HIDDEN), 1.0)
    lm = make_tiny_model("llama")
    with (
        pytest.raises(ValueError, match="read site must be one prompt token"),
        intervene(lm.adapter, reads=[Read(Site(0, ALL))], store={}),
    ):
        pass
    with pytest.raises(TypeError, match="expected Replace, Add or Steer"):
        row_edits([Add(Site(0), torch.zeros(HIDDEN)), "not an edit"])
    assert row_edits(None) == () and len(row_edits(Add(Site(0), torch.zeros(HIDDEN)))) == 1


def block_output(lm, layer: int, edits=()) -> torch.Tensor:
    """Block ``layer``'s whole output (B, T, H) on PROMPTS, ``edits`` applied (the capture runs after them)."""
    found = []
    batch = collate(lm, encode(lm, PROMPTS))
    with intervene(lm.adapter, edits):
        handle = lm.adapter.layers[layer].register_forward_hook(
            lambda module, args, output: found.append((output[0] if isinstance(output, tuple) else output).clone())
        )
        try:
            next_token_logits(lm, batch)
        finally:
            handle.remove()
    return found[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_positions_cover_their_columns_and_steer_follows_the_icv_rule(family):
    lm = make_tiny_model(family)
    n, v = len(PROMPTS), randn(HIDDEN, seed=3)
    base = block_output(lm, 1)
    width = base.shape[1]
    for position, columns in ((-1, [width - 1]), (-3, [width - 3]), (PROMPT, range(width)), (ALL, range(width)),
                              (GENERATED, [])):  # fmt: skip
        moved = block_output(lm, 1, [Add(Site(1, position), v)] * n)
        expected = base.clone()
        expected[:, list(columns)] += v
        torch.testing.assert_close(moved, expected, msg=str(position))
    rows = block_output(lm, 1, [Replace(Site(1, ALL), v), None, None, Add(Site(1, -2), v)])
    assert torch.equal(rows[0], v.expand(width, -1)) and torch.equal(rows[1:3], base[1:3])
    torch.testing.assert_close(rows[3, -2], base[3, -2] + v)
    assert torch.equal(rows[3, -1], base[3, -1]) and torch.equal(rows[3, :-2], base[3, :-2])
    # Steer: normalize(x/|x| + s (1 + max(0, cos(x, -v))) v/|v|) |x|, every token keeping its norm.
    strength = 0.7
    steered = block_output(lm, 1, [Steer(Site(1, ALL), v, strength)] * n)
    norm = base.norm(dim=-1, keepdim=True)
    against = torch.nn.functional.cosine_similarity(base, -v.expand_as(base), dim=-1).clamp_min(0)[..., None]
    moved = base / norm + strength * (1 + against) * v / v.norm()
    torch.testing.assert_close(steered, moved / moved.norm(dim=-1, keepdim=True) * norm, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steered.norm(dim=-1), base.norm(dim=-1), rtol=1e-5, atol=1e-5)


# --- b. every method under both executors -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_same_under_both_executors(family):
    lm = make_tiny_model(family)
    plain, fast = both(lm)
    layers = list(range(lm.num_layers))
    unedited = plain.predict(PROMPTS).ids
    unedited_answers = plain.generate(PROMPTS, 4, None, NO_STOP)
    changed, every = set(), methods(lm)
    for name, method in every.items():
        vectors = method.vectors(plain, DEFAULT_TEMPLATE, SETS, layers)  # (prompts, L, H)
        assert vectors.shape == (len(PROMPTS), lm.num_layers, HIDDEN)
        torch.testing.assert_close(method.vectors(fast, DEFAULT_TEMPLATE, SETS, layers), vectors,
                                   rtol=1e-4, atol=1e-5, msg=name)  # fmt: skip
        at = 1 if method.acts == "last" else None
        edits = [edits_at(method, v, at) for v in vectors]
        assert all(len(row) == len(acting_layers(method, lm.num_layers, at)) for row in edits)
        ids = plain.predict(PROMPTS, edits).ids
        assert torch.equal(ids, fast.predict(PROMPTS, edits).ids), name
        assert torch.equal(ids, fast.predict(PROMPTS, edits, short=True).ids), name
        swept = plain.sweep(PROMPTS, vectors, layers, method)
        assert torch.equal(swept, fast.sweep(PROMPTS, vectors, layers, method)), name
        assert torch.equal(swept[1], plain.predict(PROMPTS, [method.edits(1, v[1]) for v in vectors]).ids), name
        answers = plain.generate(PROMPTS, 4, edits, NO_STOP)
        assert answers == fast.generate(PROMPTS, 4, edits, NO_STOP), name
        if not torch.equal(ids, unedited) or answers != unedited_answers:
            changed.add(name)
    assert changed == set(every), f"only {sorted(changed)} changed any prediction: the test would prove little"


# --- c. cached generation equals the full re-run ------------------------------------------------------


def generation_cases(lm, executor) -> dict[str, list]:
    """Per case, each prompt's edits (rows may differ, and one may have none)."""
    n, last = len(PROMPTS), lm.num_layers - 1
    vec = iter(randn(200, HIDDEN, seed=11))
    head_size = HIDDEN // lm.adapter.num_heads  # (every tiny family's heads are this wide)
    first = [[Replace(Site(1), next(vec))] for _ in range(n)]
    first[1] = []
    return {
        "last_replace": first,
        "every_replace": with_steps(first, step_edits(executor, PROMPTS, first, "every_replace")),
        "every_delta": with_steps(first, step_edits(executor, PROMPTS, first, "every_delta")),
        "add_all_layers": [[Add(Site(0, ALL), next(vec)), Add(Site(last, ALL), next(vec))] for _ in range(n)],
        "add_prompt": [[Add(Site(1, PROMPT), next(vec))] for _ in range(n)],
        "add_generated": [[Add(Site(1, GENERATED), next(vec))] for _ in range(n)],
        "steer_all": [
            [Steer(Site(layer, ALL), next(vec), 0.3 + 0.2 * i) for layer in range(lm.num_layers)] for i in range(n)
        ],
        "mixed": [
            [
                Replace(Site(1, -2), next(vec)),
                Add(Site(1, GENERATED), next(vec)),
                Steer(Site(1, ALL), next(vec), 0.5),
                Add(Site(0, ALL, head=1), next(vec)[:head_size]),
            ]
            for _ in range(n)
        ],
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_full_rerun(family):
    lm = make_tiny_model(family)
    plain, fast = both(lm)
    assert plain.reruns_generation and not fast.reruns_generation
    unedited = generate_ids(lm, PROMPTS, 5, stop=NO_STOP, batch_size=3)
    for name, edits in generation_cases(lm, plain).items():
        cached = generate_ids(lm, PROMPTS, 5, edits=edits, stop=NO_STOP, batch_size=3)
        rerun = generate_ids(lm, PROMPTS, 5, edits=edits, stop=NO_STOP, batch_size=3, rerun=True)
        assert cached == rerun, name
        assert [len(row) for row in cached] == [5] * len(PROMPTS)
        assert cached != unedited, f"{name} changed nothing: the test would prove little"
        if name == "add_generated":  # the first token comes from the prompt alone
            assert [row[0] for row in cached] == [row[0] for row in unedited]
        assert plain.generate(PROMPTS, 5, edits, NO_STOP) == fast.generate(PROMPTS, 5, edits, NO_STOP), name
    # One batch or one prompt at a time: the same tokens (padding changes nothing).
    edits = generation_cases(lm, plain)["steer_all"]
    alone = [generate_ids(lm, [p], 5, edits=[e], stop=NO_STOP, rerun=True)[0] for p, e in zip(PROMPTS, edits)]
    assert generate_ids(lm, PROMPTS, 5, edits=edits, stop=NO_STOP, batch_size=4) == alone


# --- d. edits that change nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_edits_that_change_nothing(family):
    lm = make_tiny_model(family)
    n, layers = len(PROMPTS), range(lm.num_layers)
    base = logits_with(lm)
    big = randn(HIDDEN, seed=5, scale=10.0)
    at_generated = [Add(Site(1, GENERATED), big), Replace(Site(0, GENERATED), big), Steer(Site(2, GENERATED), big, 2.0)]
    assert torch.equal(logits_with(lm, [at_generated] * n), base)
    torch.testing.assert_close(logits_with(lm, [[Add(Site(layer, ALL), torch.zeros(HIDDEN)) for layer in layers]] * n),
                               base)  # fmt: skip
    torch.testing.assert_close(logits_with(lm, [[Steer(Site(layer, ALL), big, 0.0) for layer in layers]] * n), base,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert not torch.allclose(logits_with(lm, [[Steer(Site(1, ALL), big, 1.0)]] * n), base)  # it does act
    for executor in both(lm):
        assert torch.equal(executor.predict(PROMPTS, [at_generated] * n).ids, base.argmax(-1))
        one = executor.generate(PROMPTS, 1, [at_generated] * n, NO_STOP)
        assert one == executor.generate(PROMPTS, 1, None, NO_STOP)


# --- e. TaskVector.applied ----------------------------------------------------------------------------


def random_vector(lm, method: str, settings: dict | None = None, layer: int | None = None) -> taskvec.TaskVector:
    metadata = {**model_metadata(lm), "template": DEFAULT_TEMPLATE.to_dict()}
    if method != "task_vector":
        metadata.update(method=method, settings=settings or {})
    return taskvec.TaskVector(randn(lm.num_layers, HIDDEN, seed=7), layer, metadata)


def hf_generate(lm, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Hugging Face greedy ``generate`` on our left-padded batch (stopping at <eos>, as it does)."""
    batch = collate(lm, encode(lm, prompts))
    out = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False,
                            max_new_tokens=max_new_tokens, pad_token_id=PAD_ID)  # fmt: skip
    rows = out[:, batch.input_ids.shape[1] :].tolist()
    eos = lm.tokenizer.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


@pytest.mark.parametrize("family", FAMILIES)
def test_applied_edits_forwards_inside_the_block_only(family):
    lm = make_tiny_model(family)
    vector = random_vector(lm, "mean_difference", {"scale": 1.0, "layers": [0, lm.num_layers - 1]})
    inputs = collate(lm, encode(lm, PROMPTS)).model_inputs()
    hooks = hook_count(lm)

    def forward():
        with torch.no_grad():
            return lm.model(**inputs).logits

    before = forward()
    with vector.applied(lm) as applied:
        assert applied is vector and hook_count(lm) > hooks
        inside = forward()
    assert not torch.allclose(inside, before)
    assert torch.equal(forward(), before) and hook_count(lm) == hooks
    edits = vector.edits()
    assert [e.site for e in edits] == [Site(0, ALL), Site(lm.num_layers - 1, ALL)]
    with torch.no_grad(), intervene(lm.adapter, [edits] * len(PROMPTS)):  # the same edits, row by row
        torch.testing.assert_close(lm.model(**inputs).logits, inside)
    with pytest.raises(RuntimeError, match="inside"), vector.applied(lm):
        forward()
        raise RuntimeError("inside")
    assert torch.equal(forward(), before) and hook_count(lm) == hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_hugging_face_generate_inside_applied_equals_our_generation(family):
    """Inside ``applied``, HF's own cached ``generate`` gives our tokens: the steering hooks tell its prefill
    (empty cache: prompt positions) from its later steps (generated positions)."""
    lm = make_tiny_model(family)
    stop = StopRule(eos=True, special=False, stop_strings=())
    cases = [
        random_vector(lm, "mean_difference", {"scale": 1.0, "layers": [0, lm.num_layers - 1]}),
        random_vector(lm, "in_context_vector", {"strength": 0.6}),
        random_vector(lm, "task_vector", layer=1),
    ]
    unedited = hf_generate(lm, PROMPTS, 5)
    for vector in cases:
        ours = generate_ids(lm, PROMPTS, 5, edits=[vector.edits()] * len(PROMPTS), stop=stop)
        with vector.applied(lm):
            theirs = hf_generate(lm, PROMPTS, 5)
        assert theirs == ours, vector.method
        assert ours != unedited, vector.method
    assert hf_generate(lm, PROMPTS, 5) == unedited


# --- f. vector files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama")


def test_layer_sweep_of_a_function_vector_adds_it_at_each_layer(llama, tmp_path):
    fv = random_vector(llama, "function_vector", {"applied_scale": 1.0}, layer=1)
    fv.vectors = fv.vectors[:1].expand(llama.num_layers, -1).clone()  # one vector at every layer, as extracted
    path = tmp_path / "fv.safetensors"
    fv.save(path)
    loaded = taskvec.TaskVector.load(path)
    assert (loaded.method, loaded.operation, loaded.settings) == ("function_vector", "add", {"applied_scale": 1.0})
    sweep = taskvec.layer_sweep(llama, loaded, QUERIES)
    replaced = taskvec.layer_sweep(llama, random_vector(llama, "task_vector") * 1.0, QUERIES)
    plain = make_executor(llama, "plain", 4)
    prompts = [DEFAULT_TEMPLATE.query_prompt(q) for q in QUERIES]
    for j, layer in enumerate(sweep.layers):
        assert sweep.predictions[j] == taskvec.apply_task_vector(llama, loaded, QUERIES, layer)
        added = plain.predict(prompts, [Add(Site(layer), loaded.vectors[layer])] * len(prompts)).ids
        assert sweep.predictions[j] == decode_predictions(llama, added)
    assert sweep.predictions != replaced.predictions  # added, not replaced


def test_mean_difference_file_round_trips_with_its_settings(llama, tmp_path):
    vector = taskvec.extract(llama, DEMOS, "meandiff", scale=2.0, layers=[0, 2])
    settings = {"scale": 2.0, "layers": [0, 2], "position": ALL, "differences": "pairs"}
    assert (vector.method, vector.operation, vector.settings) == ("mean_difference", "add", settings)
    path = tmp_path / "md.safetensors"
    vector.save(path)
    loaded = taskvec.TaskVector.load(path)
    assert loaded.vectors.numpy().tobytes() == vector.vectors.numpy().tobytes()
    assert (loaded.method, loaded.operation, loaded.settings, loaded.layer) == ("mean_difference", "add", settings,
                                                                                None)  # fmt: skip
    with safe_open(str(path), "pt") as fh:
        stored = json.loads(fh.metadata()["taskvec"])
    assert (stored["acts"], stored["position"], stored["format_version"]) == ("every", ALL, 4)
    assert [(type(e), e.site) for e in loaded.edits()] == [(Add, Site(0, ALL)), (Add, Site(2, ALL))]
    for a, b in zip(loaded.edits(), vector.edits()):
        assert torch.equal(a.value, b.value)
    torch.testing.assert_close(loaded.edits()[1].value, 2.0 * vector.vectors[2])
    assert loaded.apply(llama, QUERIES) == vector.apply(llama, QUERIES)
    assert loaded.apply(llama, QUERIES, 3) == vector.apply(llama, QUERIES, 3)
    prompts = [DEFAULT_TEMPLATE.query_prompt(q) for q in QUERIES]
    edits = edits_at(method_for("meandiff", settings), loaded.vectors)
    expected = decode_predictions(llama, make_executor(llama, "plain", 4).predict(prompts, [edits] * 4).ids)
    assert taskvec.apply_task_vector(llama, loaded, QUERIES) == expected
    sweep = taskvec.layer_sweep(llama, loaded, QUERIES)  # at each layer alone, as the method adds it
    for j, layer in enumerate(sweep.layers):
        assert sweep.predictions[j] == taskvec.apply_task_vector(llama, loaded, QUERIES, layer)


def test_format_3_function_vector_file_loads_as_an_added_vector(llama, tmp_path):
    vector = randn(HIDDEN, seed=9)
    vectors = vector[None].expand(llama.num_layers, -1).contiguous()
    old_meta = {  # what format 3 wrote for `taskvec extract --method fv` (the scale applied to the vectors)
        **model_metadata(llama), "template": DEFAULT_TEMPLATE.to_dict(), "heads": [[0, 1], [1, 2]], "k": 2,
        "scale": 2.0, "method": "function_vector", "operation": "add", "format_version": 3, "layer": 1,
        "num_layers": llama.num_layers, "hidden_size": HIDDEN, "dtype": "float32",
        "vectors_sha256": vectors_sha256(vectors),
    }  # fmt: skip
    path = tmp_path / "fv3.safetensors"
    save_file({"vectors": vectors}, str(path), metadata={"taskvec": json.dumps(old_meta)})
    loaded = taskvec.TaskVector.load(path)
    assert (loaded.method, loaded.operation, loaded.layer) == ("function_vector", "add", 1)
    assert loaded.metadata["heads"] == [[0, 1], [1, 2]] and loaded.metadata["scale"] == 2.0
    (edit,) = loaded.edits()
    assert isinstance(edit, Add) and edit.site == Site(1) and torch.equal(edit.value, vector)
    prompts = [DEFAULT_TEMPLATE.query_prompt(q) for q in QUERIES]
    added = make_executor(llama, "plain", 4).predict(prompts, [Add(Site(1), vector)] * 4).ids
    assert taskvec.apply_task_vector(llama, loaded, QUERIES) == decode_predictions(llama, added)
    again = tmp_path / "fv4.safetensors"
    loaded.save(again)  # saved again: format 4, the same vector applied the same way
    reloaded = taskvec.TaskVector.load(again)
    assert (reloaded.method, reloaded.operation) == ("function_vector", "add")
    assert reloaded.settings == {"applied_scale": 1.0}
    assert reloaded.apply(llama, QUERIES, 3) == loaded.apply(llama, QUERIES, 3)


def test_settings_must_be_finite_numbers_also_in_files(llama, tmp_path):
    for bad in (float("inf"), float("nan"), True, "1"):
        with pytest.raises(TaskvecError, match="finite number"):
            InContextVectorMethod(strength=bad)
        with pytest.raises(TaskvecError, match="finite number"):
            MeanDifferenceMethod(scale=bad)
    path = tmp_path / "icv.safetensors"
    random_vector(llama, "in_context_vector", {"strength": 0.5}).save(path)
    with safe_open(str(path), "pt") as fh:
        meta, vectors = json.loads(fh.metadata()["taskvec"]), fh.get_tensor("vectors")
    assert taskvec.TaskVector.load(path).settings["strength"] == 0.5
    meta["settings"]["strength"] = float("inf")  # JSON writes Infinity, and reads it back
    save_file({"vectors": vectors}, str(path), metadata={"taskvec": json.dumps(meta)})
    with pytest.raises(TaskVectorFileError, match="not valid for in_context_vector"):
        taskvec.TaskVector.load(path)
