"""Multi-token decoding (engine/generation.py): batched, cached, patched generation equals a step-by-step
reference that runs a full forward per step without any cache, on tiny models of every family."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

import taskvec
from taskvec.engine.batching import encode
from taskvec.engine.forward import predict_token_ids
from taskvec.engine.generation import StopRule, decode_answer, generate, generate_ids
from taskvec.errors import TaskvecError

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["example:a->", "example:hello->", "x", "example:zz->", "example:qrstuv->"]
NO_STOP = StopRule(eos=False, stop_strings=(), special=False)


def reference_ids(lm, prompt: str, steps: int, layer: int | None, vector: torch.Tensor | None, stop: StopRule):
    """One prompt, no padding, no cache: a full forward per step, theta replacing block ``layer``'s output at
    the original last prompt position on every step."""
    ids = encode(lm, [prompt])[0]
    position = len(ids) - 1
    out_ids: list[int] = []

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, position, :] = vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.adapter.layers[layer].register_forward_hook(hook) if layer is not None else None
    try:
        with torch.no_grad():
            for _ in range(steps):
                logits = lm.model(input_ids=torch.tensor([ids + out_ids]), use_cache=False).logits
                token = int(logits[0, -1].argmax())
                out_ids.append(token)
                text = lm.tokenizer.decode([token])
                special = stop.special and token in lm.tokenizer.all_special_ids
                if (
                    (stop.eos and token == lm.tokenizer.eos_token_id)
                    or special
                    or any(s in text for s in stop.stop_strings)
                ):
                    break
    finally:
        if handle is not None:
            handle.remove()
    return out_ids


@pytest.mark.parametrize("patched", [True, False], ids=["patched", "plain"])
def test_batched_cached_generation_equals_step_by_step_reference(lm_any_attn, patched):
    lm = lm_any_attn
    steps = 7  # longer than the tiny gemma3's sliding window of 4
    layer = 1 if patched else None
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(len(PROMPTS), 32, generator=generator) * 3
    got = generate_ids(
        lm, PROMPTS, steps, stop=NO_STOP, batch_size=3,
        patch_layers=[layer] * len(PROMPTS) if patched else None, patch_vectors=vectors if patched else None,
    )  # fmt: skip
    for i, prompt in enumerate(PROMPTS):
        expected = reference_ids(lm, prompt, steps, layer, vectors[i] if patched else None, NO_STOP)
        assert got[i] == expected, f"row {i} ({prompt!r})"
        assert len(got[i]) == steps


def test_rows_patched_at_different_layers_in_one_batch(lm):
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(5)) * 3
    layers = [0, 2, 1]
    got = generate_ids(lm, PROMPTS[:3], 4, stop=NO_STOP, patch_layers=layers, patch_vectors=vectors)
    for i in range(3):
        assert got[i] == reference_ids(lm, PROMPTS[i], 4, layers[i], vectors[i], NO_STOP)


def test_stop_rule_cuts_each_row_at_its_first_stop_token(lm):
    free = generate_ids(lm, PROMPTS, 12, stop=NO_STOP)
    # A stop string the first row is known to produce after its first token, so the rule must fire.
    marker = next(t for t in (lm.tokenizer.decode([i]) for i in free[0][1:]) if t.strip())
    stop = StopRule(eos=True, stop_strings=(marker,))
    stopped = generate_ids(lm, PROMPTS, 12, stop=stop, batch_size=2)
    any_stopped = False
    for prompt, long, short in zip(PROMPTS, free, stopped):
        texts = [lm.tokenizer.decode([t]) for t in long]
        hits = [k for k, t in enumerate(long) if t in lm.tokenizer.all_special_ids or marker in texts[k]]
        expected = long[: hits[0] + 1] if hits else long
        assert short == expected
        assert short == reference_ids(lm, prompt, 12, None, None, stop)
        any_stopped |= bool(hits) and hits[0] < 11
    assert any_stopped, "no row stopped early: the test does not exercise the stop rule"


def test_decode_answer_drops_eos_and_cuts_at_stop_string(lm):
    tok = lm.tokenizer
    ids = tok("ab\ncd", add_special_tokens=False)["input_ids"]
    assert decode_answer(lm, ids) == "ab"
    assert decode_answer(lm, ids, NO_STOP) == "ab\ncd"
    assert decode_answer(lm, [*tok(" xy", add_special_tokens=False)["input_ids"], tok.eos_token_id]) == "xy"


def test_one_token_generation_equals_predict_token_ids(lm):
    ids = generate_ids(lm, PROMPTS, 1)
    assert [row[0] for row in ids] == predict_token_ids(lm, PROMPTS).tolist()


def test_task_vector_apply_of_loaded_equals_in_memory(tmp_path):
    lm = make_tiny_model("qwen2")
    tv = taskvec.extract_task_vector(lm, [("a", "b"), ("c", "d"), ("e", "f")])
    tv.layer = 1
    path = tmp_path / "tv.safetensors"
    tv.save(path)
    loaded = taskvec.TaskVector.load(path)
    queries = ["g", "hij", "k"]
    assert loaded.apply(lm, queries, max_new_tokens=5, stop=NO_STOP) == tv.apply(lm, queries, 5, stop=NO_STOP)
    one = tv.apply(lm, queries, stop=StopRule(eos=False, special=False))
    assert one == taskvec.apply_task_vector(lm, tv, queries)


@pytest.mark.parametrize("bad", [0, -1, 257, 2.5, True, "3"])
def test_max_new_tokens_out_of_range(bad):
    lm = make_tiny_model("llama")
    with pytest.raises(TaskvecError, match="max_new_tokens"):
        generate(lm, ["x"], bad)


@pytest.mark.parametrize("queries", [[], [""], ["a", "  "]])
def test_empty_queries_refused(queries):
    lm = make_tiny_model("llama")
    tv = taskvec.extract_task_vector(lm, [("a", "b"), ("c", "d")])
    with pytest.raises(TaskvecError, match=r"no queries|empty"):
        tv.apply(lm, queries, layer=0)
