"""Tiny random causal LMs of several architecture families, built in memory (nothing from the hub).

Each model is a few layers of width 32 with a character-level tokenizer over printable ASCII, so
that any 2-character answer is 2 tokens and every prompt's length in tokens is known exactly.
"""

from __future__ import annotations

import functools
import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.loading import LoadedModel

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
CHARS = sorted(set(string.printable))
VOCAB = {token: i for i, token in enumerate(SPECIALS + CHARS)}
VOCAB_SIZE = len(VOCAB)

FAMILIES = ["llama", "qwen2", "gemma3", "gpt2", "gpt_neox", "gptj"]
#: Families whose tiny model gets the tokenizer that adds <bos>; the others get the one with no BOS,
#: so the adapter's "\n" fallback prefix is used.
BOS_FAMILIES = {"llama", "gemma3", "gpt_neox"}

NUM_LAYERS = {"llama": 3, "qwen2": 3, "gemma3": 4, "gpt2": 3, "gpt_neox": 3, "gptj": 3}
HIDDEN = 32
DEFAULT_MAX_POSITIONS = 256
GEMMA_SLIDING_WINDOW = 4
# Larger than the usual 0.02 so that the random models have spread-out logits (non-degenerate argmax).
INIT_RANGE = 0.2


def make_tokenizer(with_bos: bool) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character, with or without an automatic <bos>."""
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    kwargs = {"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    if with_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS_ID)]
        )
        kwargs["bos_token"] = "<bos>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kwargs)
    assert len(fast) == VOCAB_SIZE
    return fast


def _config(family: str, num_layers: int, max_positions: int, attn: str):
    common = {"vocab_size": VOCAB_SIZE, "pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    llama_like = {
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
        "initializer_range": INIT_RANGE,
        "tie_word_embeddings": False,
        "attn_implementation": attn,
        **common,
    }
    if family == "llama":
        return LlamaForCausalLM, LlamaConfig(**llama_like)
    if family == "qwen2":
        return Qwen2ForCausalLM, Qwen2Config(**llama_like)
    if family == "gemma3":
        layer_types = [("sliding_attention" if i % 2 == 0 else "full_attention") for i in range(num_layers)]
        return Gemma3ForCausalLM, Gemma3TextConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=8,
            layer_types=layer_types,
            sliding_window=GEMMA_SLIDING_WINDOW,
            max_position_embeddings=max_positions,
            initializer_range=INIT_RANGE,
            attn_implementation=attn,
            **common,
        )
    gpt_like = {
        "n_embd": HIDDEN,
        "n_layer": num_layers,
        "n_head": 4,
        "n_positions": max_positions,
        "initializer_range": INIT_RANGE,
        "attn_implementation": attn,
        **common,
    }
    if family == "gpt2":
        return GPT2LMHeadModel, GPT2Config(**gpt_like)
    if family == "gpt_neox":
        return GPTNeoXForCausalLM, GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            max_position_embeddings=max_positions,
            initializer_range=INIT_RANGE,
            attn_implementation=attn,
            **common,
        )
    if family == "gptj":
        return GPTJForCausalLM, GPTJConfig(rotary_dim=4, **gpt_like)
    raise ValueError(f"unknown family {family!r}")


@functools.cache
def make_tiny_model(
    family: str,
    *,
    attn: str = "eager",
    with_bos: bool | None = None,
    num_layers: int | None = None,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    seed: int = 0,
) -> LoadedModel:
    """A tiny random ``LoadedModel`` of ``family`` (cached: do not mutate what it returns)."""
    with_bos = family in BOS_FAMILIES if with_bos is None else with_bos
    num_layers = NUM_LAYERS[family] if num_layers is None else num_layers
    model_cls, config = _config(family, num_layers, max_positions, attn)
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    tokenizer = make_tokenizer(with_bos)
    adapter = ArchitectureAdapter.from_model(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, model_id=f"tiny-{family}")


def patch_last_position(layers, patches):
    """Test shorthand: ``patches[l] = (rows, vectors)`` replace block l's output of those batch rows at the
    last position (one :class:`~taskvec.core.sites.Replace` per row, applied by ``intervene``)."""
    from taskvec.core.sites import Replace, Site
    from taskvec.engine.interventions import intervene

    n = max((int(rows.max()) + 1 for rows, _ in patches.values() if len(rows)), default=0)
    edits = [[] for _ in range(n)]
    for layer, (rows, vectors) in patches.items():
        for row, vector in zip(rows.tolist(), vectors):
            edits[row].append(Replace(Site(layer), vector))
    return intervene(layers, edits)


def patched_token_ids(lm, prompts, vectors, layers, batch_size=32):
    """Test shorthand: next tokens with row i's block output at ``layers[i]`` replaced by ``vectors[i]``."""
    from taskvec.engine.forward import predict_token_ids

    return predict_token_ids(lm, prompts, patch_layers=list(layers), patch_vectors=vectors, batch_size=batch_size)
