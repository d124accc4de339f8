"""The engine's fast paths agree with plain forward passes, on tiny random models of every family.

Batching with left padding, the capture hook point, patching, the cached layer sweep and the
hooks' clean-up are each checked against a straightforward reference computation.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    BOS_ID,
    NUM_LAYERS,
    VOCAB,
    VOCAB_SIZE,
    make_tiny_model,
    make_tokenizer,
    patch_last_position,
    patched_token_ids,
)
from torch import nn

import taskvec
from taskvec.api.extraction import mean_states
from taskvec.core.sites import replacements
from taskvec.engine import sweep as sweep_module
from taskvec.engine.batching import collate, encode
from taskvec.engine.forward import last_position_states, next_token_logits, predict_token_ids
from taskvec.engine.hooks import StopForward, capture_last_position, skip_blocks
from taskvec.engine.interventions import intervene
from taskvec.engine.shared_prefix import all_but_last_cache
from taskvec.engine.shortcuts import Shortcuts
from taskvec.engine.sweep import sweep_token_ids
from taskvec.engine.vocab_argmax import argmax_over_vocab
from taskvec.models.adapter import ArchitectureAdapter, find_decoder_layers, find_final_norm

pytestmark = pytest.mark.usefixtures("single_thread")

ATOL = 1e-4
RTOL = 1e-4

# Prompts of different lengths, all longer than gemma3's sliding window of 4 tokens.
PROMPTS = [
    "example:a->b\nexample:c->d\nexample:e->",
    "example:q->",
    "example:hello->w\nexample:x->",
    "cat->",
    "example:1->2\nexample:3->4\nexample:5->6\nexample:7->",
]
# Other prompts whose block outputs serve as realistic patch vectors.
DONORS = [
    "example:z->y\nexample:k->",
    "up->d\nin->o\nleft->",
    "example:9->8\nexample:7->6\nexample:",
    "The quick brown fox->",
    "A->B\nC->",
]


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


def assert_argmax_matches(token_ids: torch.Tensor, reference_logits: torch.Tensor) -> None:
    """``token_ids`` are the argmax of ``reference_logits`` (N, V), up to exact float ties."""
    token_ids = token_ids.reshape(-1)
    reference_logits = reference_logits.reshape(len(token_ids), -1)
    best = reference_logits.max(dim=-1).values
    chosen = reference_logits.gather(1, token_ids[:, None])[:, 0]
    bad = (best - chosen) > ATOL
    assert not bad.any(), (
        f"token ids {token_ids[bad].tolist()} are not the argmax {reference_logits.argmax(-1)[bad].tolist()} "
        f"(logit gap {(best - chosen)[bad].tolist()})"
    )


def single_batch(lm, prompt: str):
    return collate(lm, encode(lm, [prompt]))


def forward_hooks(lm) -> list[list[int]]:
    """The forward hook ids of every block.

    transformers itself installs a permanent output-capturing hook on each block the first time a model
    runs with ``output_hidden_states=True``, so "no hook of ours is left" means "the same hooks as before".
    """
    return [list(layer._forward_hooks) for layer in lm.adapter.layers]


def donor_states(lm) -> torch.Tensor:
    """Block outputs of the donor prompts, one group per donor: (len(DONORS), num_layers, H)."""
    return mean_states(lm, [[d] for d in DONORS])


def full_forward_patched_logits(lm, prompts, vectors: torch.Tensor, layer_of_row) -> torch.Tensor:
    """Logits of one left-padded full forward where row i has ``vectors[i]`` patched at ``layer_of_row[i]``."""
    batch = collate(lm, encode(lm, prompts))
    with intervene(lm.adapter, replacements(list(layer_of_row), vectors)):
        return next_token_logits(lm, batch)


# --- batching ---------------------------------------------------------------------------------------


def test_batch_is_left_padded_with_positions_from_zero(lm):
    rows = encode(lm, PROMPTS)
    batch = collate(lm, rows)
    width = max(len(r) for r in rows)
    for i, row in enumerate(rows):
        pad = width - len(row)
        assert batch.input_ids[i, pad:].tolist() == row
        assert batch.attention_mask[i].tolist() == [0] * pad + [1] * len(row)
        assert batch.position_ids[i, pad:].tolist() == list(range(len(row)))


def test_batched_logits_equal_one_by_one(lm_any_attn):
    lm = lm_any_attn
    batched = next_token_logits(lm, collate(lm, encode(lm, PROMPTS)))
    alone = torch.cat([next_token_logits(lm, single_batch(lm, p)) for p in PROMPTS])
    assert batched.shape == (len(PROMPTS), VOCAB_SIZE)
    close(batched, alone)
    assert_argmax_matches(predict_token_ids(lm, PROMPTS, batch_size=2), alone)


def test_batched_mean_states_equal_one_by_one(lm_any_attn):
    lm = lm_any_attn
    batched = mean_states(lm, [[p] for p in PROMPTS])
    chunked = mean_states(lm, [[p] for p in PROMPTS], batch_size=2)
    alone = torch.cat([mean_states(lm, [[p]]) for p in PROMPTS])
    assert batched.shape == (len(PROMPTS), lm.num_layers, lm.model.config.get_text_config().hidden_size)
    close(batched, alone)
    close(chunked, alone)
    # A group's state is the mean over its prompts; a subset of layers is the matching slice.
    grouped = mean_states(lm, [PROMPTS[:2], PROMPTS[2:]])
    close(grouped[0], alone[:2].mean(0))
    close(grouped[1], alone[2:].mean(0))
    some = [lm.num_layers - 1, 0]
    close(mean_states(lm, [[p] for p in PROMPTS], layers=some), alone[:, some])


def test_gemma3_sliding_window_is_exercised():
    """Layer 0 of the tiny gemma3 is a sliding-window layer: its last state ignores tokens beyond the window."""
    lm = make_tiny_model("gemma3")
    config = lm.model.config
    assert config.layer_types[0] == "sliding_attention" and "full_attention" in config.layer_types
    assert all(len(row) > 2 * config.sliding_window for row in encode(lm, PROMPTS[:3]))
    a, b = "Xexample:hello->w\nexample:x->", "Yexample:hello->w\nexample:x->"
    states = mean_states(lm, [[a], [b]])  # both prompts in one batch
    close(states[0, 0], states[1, 0])  # the differing first character is out of layer 0's window
    assert not torch.allclose(states[0, 1], states[1, 1], atol=1e-3)  # layer 1 attends to all tokens


# --- extraction hook point --------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [PROMPTS[0], PROMPTS[3]])
def test_captured_states_are_the_hidden_states(lm, prompt):
    batch = single_batch(lm, prompt)
    out = lm.model(**batch.model_inputs(), output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == lm.num_layers + 1
    layers = list(range(lm.num_layers))
    states = last_position_states(lm, batch, layers)  # (L, 1, H)
    extracted = mean_states(lm, [[prompt]])[0]  # (L, H)
    for layer in layers[:-1]:
        close(states[layer], hidden[layer + 1][:, -1])
        close(extracted[layer], hidden[layer + 1][0, -1])
    # The last hidden state has the final norm applied; the captured last block output has not.
    with torch.no_grad():
        close(lm.adapter.final_norm(states[-1]), hidden[-1][:, -1])
    assert not torch.allclose(states[-1], hidden[-1][:, -1], atol=1e-3)


def test_stop_after_last_gives_same_states_as_full_run(lm):
    before = forward_hooks(lm)
    batch = collate(lm, encode(lm, PROMPTS))
    early = last_position_states(lm, batch, [0])
    full = last_position_states(lm, batch, list(range(lm.num_layers)))
    close(early[0], full[0])
    assert forward_hooks(lm) == before


# --- patching ---------------------------------------------------------------------------------------


def test_patching_own_state_leaves_logits_unchanged(lm):
    before = forward_hooks(lm)
    batch = collate(lm, encode(lm, PROMPTS))
    base = next_token_logits(lm, batch)
    own = last_position_states(lm, batch, list(range(lm.num_layers)))  # (L, B, H)
    donors = donor_states(lm)
    rows = torch.arange(len(PROMPTS))
    for layer in range(lm.num_layers):
        with patch_last_position(lm.adapter.layers, {layer: (rows, own[layer])}):
            close(next_token_logits(lm, batch), base)
        # A foreign state does change the logits, so the check above can fail.
        with patch_last_position(lm.adapter.layers, {layer: (rows, donors[:, layer])}):
            assert not torch.allclose(next_token_logits(lm, batch), base, atol=1e-2)
    assert forward_hooks(lm) == before


def test_patch_at_last_layer_gives_unembedded_vector(lm):
    """Patching the last block means the logits are unembedding(final_norm(vector)) exactly."""
    vectors = donor_states(lm)[:, -1]
    logits = full_forward_patched_logits(lm, PROMPTS, vectors, [lm.num_layers - 1] * len(PROMPTS))
    with torch.no_grad():
        expected = lm.adapter.unembedding(lm.adapter.final_norm(vectors)).float()
    close(logits, expected)


def test_patch_replaces_only_last_position_of_chosen_rows(lm):
    batch = collate(lm, encode(lm, PROMPTS))
    layer = 1
    rows = torch.tensor([0, 2, 3])
    vectors = donor_states(lm)[rows, layer]

    def block_output() -> torch.Tensor:
        """Block ``layer``'s output as later blocks see it (after any patch hook registered earlier)."""
        seen: list[torch.Tensor] = []
        hook = lambda module, args, output: seen.append(output[0] if isinstance(output, tuple) else output)  # noqa: E731
        handle = lm.adapter.layers[layer].register_forward_hook(hook)
        try:
            next_token_logits(lm, batch)
        finally:
            handle.remove()
        return seen[0]

    unpatched = block_output()
    with patch_last_position(lm.adapter.layers, {layer: (rows, vectors)}):
        patched = block_output()
    close(patched[rows, -1], vectors)
    close(patched[:, :-1], unpatched[:, :-1])  # earlier positions untouched
    others = [i for i in range(len(PROMPTS)) if i not in rows.tolist()]
    close(patched[others], unpatched[others])  # rows not patched untouched


def test_rows_patched_at_different_layers_equal_each_row_alone(lm):
    donors = donor_states(lm)
    layer_of_row = [i % lm.num_layers for i in range(len(PROMPTS))]
    layer_of_row[-1] = lm.num_layers - 1
    assert len(set(layer_of_row)) > 1
    vectors = torch.stack([donors[i, layer] for i, layer in enumerate(layer_of_row)])
    batched = full_forward_patched_logits(lm, PROMPTS, vectors, layer_of_row)
    alone = torch.cat(
        [full_forward_patched_logits(lm, [p], vectors[i : i + 1], [layer_of_row[i]]) for i, p in enumerate(PROMPTS)]
    )
    close(batched, alone)
    ids = predict_token_ids(lm, PROMPTS, patch_layers=layer_of_row, patch_vectors=vectors, batch_size=2)
    assert_argmax_matches(ids, alone)


# --- the cached layer sweep -------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "full-logits"])
def test_cached_sweep_equals_full_forward_at_every_layer(lm_any_attn, fast):
    lm = lm_any_attn
    vectors = donor_states(lm)  # (N, L, H)
    layers = list(range(lm.num_layers))
    batch = collate(lm, encode(lm, PROMPTS))
    with torch.no_grad():  # as in sweep_token_ids
        cache, arity = all_but_last_cache(lm, batch)
        ids = sweep_module._last_token_ids(lm, batch, cache, vectors, layers, arity, fast)  # (N, L), one forward
        for layer in layers:
            full = full_forward_patched_logits(lm, PROMPTS, vectors[:, layer], [layer] * len(PROMPTS))
            assert_argmax_matches(ids[:, layer], full)
        # The prefix cache is reused, never consumed: a second pass over it gives the same ids.
        again = sweep_module._last_token_ids(lm, batch, cache, vectors, layers[1:], arity, fast)
    assert torch.equal(again, ids[:, 1:])
    assert ids.unique().numel() >= 2


def test_slow_path_logits_equal_full_forward(lm, monkeypatch):
    recorded: list[torch.Tensor] = []

    def recording_next_token_logits(*args, **kwargs):
        recorded.append(next_token_logits(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(sweep_module, "next_token_logits", recording_next_token_logits)
    vectors = donor_states(lm)
    layers = list(range(lm.num_layers))
    batch = collate(lm, encode(lm, PROMPTS))
    with torch.no_grad():
        cache, arity = all_but_last_cache(lm, batch)
        sweep_module._last_token_ids(lm, batch, cache, vectors, layers, arity, fast=False)
    cached = recorded[0].view(len(PROMPTS), len(layers), -1)  # rows are prompt-major
    for layer in layers:
        close(cached[:, layer], full_forward_patched_logits(lm, PROMPTS, vectors[:, layer], [layer] * len(PROMPTS)))


def test_argmax_over_vocab_slices_equals_argmax_of_full_logits():
    torch.manual_seed(0)
    head = nn.Linear(8, 50)
    hidden = torch.randn(6, 8)
    for slice_rows in (1, 7, 50, 4096):
        assert torch.equal(argmax_over_vocab(head, hidden, slice_rows), head(hidden).argmax(dim=-1))
    tied = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        tied.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.5]]))
    assert argmax_over_vocab(tied, torch.tensor([[1.0, 0.0]]), slice_rows=1).item() == 1  # first on ties


def test_skipping_lower_blocks_is_verified_and_can_be_turned_off(lm):
    fresh = make_tiny_model(lm.model_id.removeprefix("tiny-"), seed=3)
    shortcuts = Shortcuts()
    vectors = donor_states(fresh)
    fast = sweep_token_ids(fresh, PROMPTS, vectors, shortcuts=shortcuts)
    assert shortcuts.skip_blocks is True and shortcuts.shortlist is True  # every standard decoder passes
    assert not hasattr(fresh.adapter, "fast_sweep_verified")  # what was learned stays with the caller
    off = Shortcuts(shortlist=False, skip_blocks=False)  # as for a model that shares keys/values across layers
    assert torch.equal(sweep_token_ids(fresh, PROMPTS, vectors, shortcuts=off), fast)


def test_skip_blocks_restores_forward_even_on_error(lm):
    blocks = lm.adapter.layers
    originals = [block.forward for block in blocks]
    own = [block.__dict__.get("forward") for block in blocks]  # some transformers versions set one per instance
    with pytest.raises(RuntimeError, match="boom"), skip_blocks(blocks, len(blocks) - 1, None):
        assert blocks[0].forward(torch.ones(1)) is not None
        raise RuntimeError("boom")
    assert [block.forward for block in blocks] == originals
    assert [block.__dict__.get("forward") for block in blocks] == own


@pytest.mark.parametrize("max_rows", [3, 1, 256], ids=["max_rows3", "max_rows1", "default"])
def test_sweep_token_ids_equal_patched_full_forward(lm_any_attn, max_rows):
    lm = lm_any_attn
    vectors = donor_states(lm)
    layers = list(range(lm.num_layers))
    swept = sweep_token_ids(lm, PROMPTS, vectors, layers, max_rows=max_rows)  # (L, N)
    assert swept.shape == (len(layers), len(PROMPTS))
    for i, layer in enumerate(layers):
        full = full_forward_patched_logits(lm, PROMPTS, vectors[:, layer], [layer] * len(PROMPTS))
        assert_argmax_matches(swept[i], full)
        ids = patched_token_ids(lm, PROMPTS, vectors[:, layer], [layer] * len(PROMPTS), batch_size=2)
        assert_argmax_matches(ids, full)
    # The comparison is meaningful only if the predictions vary.
    assert swept.unique().numel() >= 2


def test_sweep_chunks_prompts_and_layers(lm):
    """Prompts split into groups of max_rows; a subset of layers in any order."""
    vectors = donor_states(lm)
    layers = list(range(lm.num_layers))[::-1]
    reference = sweep_token_ids(lm, PROMPTS, vectors, layers, max_rows=256)
    for max_rows in (1, 2, 3, 4, 7):
        close(sweep_token_ids(lm, PROMPTS, vectors, layers, max_rows=max_rows).float(), reference.float())
    one = sweep_token_ids(lm, PROMPTS[:1], vectors[:1], layers, max_rows=3)
    close(one.float(), reference[:, :1].float())
    subset = [lm.num_layers - 1, 0]
    close(sweep_token_ids(lm, PROMPTS, vectors, subset, max_rows=3).float(), reference[[0, -1]].float())


def test_sweep_last_token_forwards_have_at_most_max_rows_rows(lm, monkeypatch):
    rows_per_forward: list[int] = []
    real_argmax = sweep_module.argmax_and_margin

    def counting_argmax(unembedding, hidden, *args, **kwargs):
        rows_per_forward.append(hidden.shape[0])
        return real_argmax(unembedding, hidden, *args, **kwargs)

    vectors = donor_states(lm)
    layers = list(range(lm.num_layers))
    shortcuts = Shortcuts()
    sweep_token_ids(lm, PROMPTS, vectors, layers, shortcuts=shortcuts)  # the one-time check, not counted
    assert shortcuts.skip_blocks is True
    monkeypatch.setattr(sweep_module, "argmax_and_margin", counting_argmax)
    for n_prompts, max_rows in [(5, 3), (1, 3), (2, 5), (5, 256)]:
        rows_per_forward.clear()
        sweep_token_ids(lm, PROMPTS[:n_prompts], vectors[:n_prompts], layers, max_rows=max_rows, shortcuts=shortcuts)
        assert max(rows_per_forward) <= max_rows
        assert sum(rows_per_forward) == n_prompts * len(layers)  # every (prompt, layer) pair exactly once


def test_layer_sweep_agrees_with_apply_task_vector(lm):
    demonstrations = [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]
    tv = taskvec.extract_task_vector(lm, demonstrations)
    queries = ["x", "hello", "k"]
    result = taskvec.layer_sweep(lm, tv, queries, answers=["y", "z", "l"])
    assert result.layers == list(range(lm.num_layers))
    assert len(result.accuracy) == lm.num_layers
    for i, layer in enumerate(result.layers):
        assert result.predictions[i] == taskvec.apply_task_vector(lm, tv, queries, layer=layer)


# --- hooks are always removed -----------------------------------------------------------------------


def fresh_model(lm):
    """An unshared model of ``lm``'s family that never ran with output_hidden_states: it has no hooks at all."""
    fresh = make_tiny_model(lm.model_id.removeprefix("tiny-"), seed=1)
    assert all(len(layer._forward_hooks) == 0 for layer in fresh.adapter.layers)
    return fresh


def test_hooks_removed_when_with_block_raises(lm):
    lm = fresh_model(lm)
    layers = lm.adapter.layers
    last = lm.num_layers - 1
    patches = {0: (torch.tensor([0]), torch.zeros(1, 32)), last: (torch.tensor([0]), torch.zeros(1, 32))}
    with pytest.raises(RuntimeError, match="boom"), patch_last_position(layers, patches):
        assert [len(hooks) for hooks in forward_hooks(lm)] == [1] + [0] * (last - 1) + [1]
        raise RuntimeError("boom")
    assert forward_hooks(lm) == [[]] * lm.num_layers
    store: dict[int, torch.Tensor] = {}
    with pytest.raises(RuntimeError, match="boom"), capture_last_position(layers, [0, 1], store):
        assert sum(len(hooks) for hooks in forward_hooks(lm)) == 2
        raise RuntimeError("boom")
    assert forward_hooks(lm) == [[]] * lm.num_layers


def test_hooks_removed_when_forward_raises(lm):
    lm = fresh_model(lm)
    layers = lm.adapter.layers
    bad_input = torch.tensor([[VOCAB_SIZE + 1000]])  # out of the embedding's range
    store: dict[int, torch.Tensor] = {}
    with pytest.raises(IndexError), capture_last_position(layers, list(range(lm.num_layers)), store):
        lm.model(input_ids=bad_input)
    assert forward_hooks(lm) == [[]] * lm.num_layers
    # A patch vector of the wrong width makes the hook itself raise inside the forward pass.
    batch = collate(lm, encode(lm, PROMPTS[:2]))
    wrong = torch.zeros(2, 7)
    with pytest.raises(RuntimeError), patch_last_position(layers, {1: (torch.arange(2), wrong)}):
        next_token_logits(lm, batch)
    assert forward_hooks(lm) == [[]] * lm.num_layers
    # StopForward ends a capture early and leaves no hook behind, in the engine as when raised by hand.
    with pytest.raises(StopForward), capture_last_position(layers, [0], store, stop_after_last=True):
        lm.adapter.base_model(**batch.model_inputs())
    assert forward_hooks(lm) == [[]] * lm.num_layers
    last_position_states(lm, batch, [0, 1])
    assert forward_hooks(lm) == [[]] * lm.num_layers


# --- GPT-J: blocks that return tuples ---------------------------------------------------------------


class TupleBlock(nn.Module):
    """Stands for a block returning (hidden, extra), like GPT-J's."""

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return x * 2.0, self.extra


class TensorBlock(nn.Module):
    def forward(self, x):
        return x * 2.0


def test_patch_hook_on_tuple_output_replaces_only_last_hidden():
    extra = object()
    layers = nn.ModuleList([TupleBlock(extra)])
    x = torch.randn(3, 5, 4)
    vectors = torch.randn(2, 4)
    rows = torch.tensor([0, 2])
    with patch_last_position(layers, {0: (rows, vectors)}):
        out = layers[0](x)
    assert isinstance(out, tuple) and len(out) == 2
    assert out[1] is extra
    hidden = out[0]
    torch.testing.assert_close(hidden[rows, -1], vectors)
    torch.testing.assert_close(hidden[1], x[1] * 2.0)  # row 1 not patched
    torch.testing.assert_close(hidden[:, :-1], x[:, :-1] * 2.0)  # earlier positions untouched
    assert len(layers[0]._forward_hooks) == 0
    store: dict[int, torch.Tensor] = {}
    with capture_last_position(layers, [0], store):
        layers[0](x)
    torch.testing.assert_close(store[0], x[:, -1] * 2.0)


def test_patch_hook_on_tensor_output():
    layers = nn.ModuleList([TensorBlock()])
    x = torch.randn(2, 3, 4)
    vectors = torch.randn(1, 4)
    with patch_last_position(layers, {0: (torch.tensor([1]), vectors)}):
        out = layers[0](x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out[1, -1], vectors[0])
    torch.testing.assert_close(out[0], x[0] * 2.0)
    torch.testing.assert_close(out[1, :-1], x[1, :-1] * 2.0)
    torch.testing.assert_close(x, x.clone())  # the input is not modified in place


def test_gptj_block_output_patching_works_whatever_its_type():
    """GPT-J blocks returned a tuple before transformers 5.24 and a tensor since; patching handles either."""
    lm = make_tiny_model("gptj")
    outputs: list = []
    handle = lm.adapter.layers[0].register_forward_hook(lambda m, a, o: outputs.append(o))
    try:
        next_token_logits(lm, single_batch(lm, PROMPTS[0]))
    finally:
        handle.remove()
    hidden = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    # Patch layer 0 and look at what the next block receives: the patched output, of the same type.
    vector = donor_states(lm)[0, 0]
    seen: list = []
    with patch_last_position(lm.adapter.layers, {0: (torch.tensor([0]), vector[None])}):
        handle = lm.adapter.layers[0].register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            patched = next_token_logits(lm, single_batch(lm, PROMPTS[0]))
        finally:
            handle.remove()
    assert type(seen[0]) is type(outputs[0])
    seen_hidden = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    close(seen_hidden[0, -1], vector)
    close(seen_hidden[:, :-1], hidden[:, :-1])
    assert not torch.allclose(patched, next_token_logits(lm, single_batch(lm, PROMPTS[0])), atol=1e-2)


class _TupleBlock(nn.Module):
    """A block that returns (hidden, extra), as GPT-J's did before transformers 5.24."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, hidden):
        return self.linear(hidden), "extra"


def test_hooks_read_and_replace_the_hidden_state_of_tuple_outputs():
    torch.manual_seed(0)
    blocks = nn.ModuleList([_TupleBlock(4), _TupleBlock(4)])
    hidden = torch.randn(2, 3, 4)

    def run(x):
        for block in blocks:
            x, extra = block(x)
            assert extra == "extra"
        return x

    store: dict[int, torch.Tensor] = {}
    with capture_last_position(blocks, [0], store):
        plain = run(hidden)
    close(store[0], blocks[0].linear(hidden)[:, -1])
    vector = torch.ones(1, 4)
    with patch_last_position(blocks, {0: (torch.tensor([1]), vector)}):
        patched = run(hidden)
    close(patched[0], plain[0])
    close(patched[1, :-1], plain[1, :-1])
    close(patched[1, -1], blocks[1].linear(vector)[0])


# --- the architecture adapter -----------------------------------------------------------------------


def _expected_parts(lm):
    model, family = lm.model, lm.model_id.removeprefix("tiny-")
    if family in ("llama", "qwen2", "gemma3"):
        return model.model.layers, model.model.norm, model.lm_head
    if family in ("gpt2", "gptj"):
        return model.transformer.h, model.transformer.ln_f, model.lm_head
    if family == "gpt_neox":
        head = model.lm_head if hasattr(model, "lm_head") else model.embed_out  # renamed in transformers 5.x
        return model.gpt_neox.layers, model.gpt_neox.final_layer_norm, head
    raise AssertionError(family)


def test_adapter_finds_layers_norm_and_unembedding(lm):
    layers, norm, unembedding = _expected_parts(lm)
    family = lm.model_id.removeprefix("tiny-")
    assert lm.num_layers == NUM_LAYERS[family]
    assert lm.adapter.layers is layers
    assert lm.adapter.final_norm is norm
    assert "Norm" in type(lm.adapter.final_norm).__name__
    assert lm.adapter.unembedding is unembedding
    assert lm.adapter.max_positions == 256


class _Block(nn.Module):
    def __init__(self, sublayers: int = 0):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        if sublayers:
            self.experts = nn.ModuleList([nn.Linear(4, 4) for _ in range(sublayers)])


class _Base(nn.Module):
    """Like BLOOM: a norm on the embeddings before the blocks, the final norm after them."""

    def __init__(self, num_layers: int = 3, sublayers: int = 0):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.embed_layernorm = nn.LayerNorm(4)
        self.blocks = nn.ModuleList([_Block(sublayers) for _ in range(num_layers)])
        self.dropout = nn.Dropout(0.0)
        self.final_rmsnorm = nn.RMSNorm(4)
        self.head_norm_after = nn.LayerNorm(4)


def test_find_final_norm_is_the_first_norm_after_the_blocks():
    base = _Base()
    assert find_final_norm(base, base.blocks) is base.final_rmsnorm
    no_norm = nn.Module()
    no_norm.layers = nn.ModuleList([_Block()])
    assert find_final_norm(no_norm, no_norm.layers) is None


def test_find_decoder_layers_prefers_the_shallowest_list_of_the_layer_count():
    base = _Base(num_layers=3, sublayers=3)  # each block holds a ModuleList of 3 "experts"
    assert find_decoder_layers(base, 3) is base.blocks
    assert find_decoder_layers(base, None) is base.blocks
    wide = _Base(num_layers=2, sublayers=5)
    assert find_decoder_layers(wide, 2) is wide.blocks
    assert find_decoder_layers(wide, 5) is wide.blocks[0].experts


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapter_prefix_ids(family):
    model = make_tiny_model(family).model
    with_bos = ArchitectureAdapter.from_model(model, make_tokenizer(with_bos=True))
    without_bos = ArchitectureAdapter.from_model(model, make_tokenizer(with_bos=False))
    assert with_bos.prefix_ids == []
    assert without_bos.prefix_ids == [VOCAB["\n"]]


def test_encode_starts_with_bos_or_the_fallback_prefix(lm):
    rows = encode(lm, ["ab"])
    if lm.adapter.prefix_ids:
        assert rows == [[VOCAB["\n"], VOCAB["a"], VOCAB["b"]]]
    else:
        assert rows == [[BOS_ID, VOCAB["a"], VOCAB["b"]]]
