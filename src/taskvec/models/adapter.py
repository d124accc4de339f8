"""Where the pieces of a decoder-only model live, found from its module structure.

No model names are checked: the decoder blocks are the ``nn.ModuleList`` with one entry per hidden
layer, the final norm is the norm module the base model registers after them, and the unembedding
is the model's output embedding. A block may return a tensor or a tuple whose first item is the
hidden state (GPT-J); the hooks in :mod:`taskvec.engine.hooks` handle both.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

#: Text placed before every prompt when the tokenizer adds no BOS token. Without it the prompt's
#: first token becomes an attention sink and patching fails (seen on Qwen).
FALLBACK_PREFIX = "\n"


@dataclass
class ArchitectureAdapter:
    """Handles on the parts of one causal LM that task-vector work touches."""

    base_model: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    unembedding: nn.Module
    prefix_ids: list[int]  # token ids put before every prompt by us (empty when the tokenizer adds BOS)
    accepts_logits_to_keep: bool
    max_positions: int | None
    #: The forward keyword for a key/value cache: ``cache`` from transformers 5.24 on (where
    #: ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before.
    cache_kwarg: str = "past_key_values"
    #: Attention heads per block (None when the configuration does not say).
    num_heads: int | None = None
    #: Each block's attention head site (``taskvec.models.head_sites.adapter_head_sites`` finds them once and
    #: keeps them here; not compared, not copied by ``dataclasses.replace``).
    head_site_cache: list | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer) -> ArchitectureAdapter:
        base = getattr(model, "base_model", model)
        layers = find_decoder_layers(base, _num_hidden_layers(model))
        unembedding = model.get_output_embeddings()
        if unembedding is None:
            raise TypeError(f"{type(model).__name__} has no output embedding: is it a causal LM?")
        return cls(
            base_model=base,
            layers=layers,
            final_norm=find_final_norm(base, layers),
            unembedding=unembedding,
            prefix_ids=prompt_prefix_ids(tokenizer),
            accepts_logits_to_keep="logits_to_keep" in inspect.signature(model.forward).parameters,
            max_positions=_max_positions(model),
            cache_kwarg=cache_keyword(base),
            num_heads=_config_int(model, ("num_attention_heads", "n_head")),
        )

    def cache_inputs(self, cache) -> dict:
        """Forward keywords that pass ``cache`` (None: no cache) and ask for it to be kept and returned."""
        return {self.cache_kwarg: cache, "use_cache": cache is not None}


def cache_keyword(module: nn.Module) -> str:
    """The name ``module.forward`` takes its key/value cache under."""
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(output):
    """The key/value cache a forward returned, under either of transformers' names for it."""
    keys = output.keys()
    name = "cache" if "cache" in keys else "past_key_values"
    return output[name] if name in keys else None


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _config_int(model: nn.Module, keys: tuple[str, ...]) -> int | None:
    config = _text_config(model)
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _num_hidden_layers(model: nn.Module) -> int | None:
    return _config_int(model, ("num_hidden_layers", "n_layer", "num_layers"))


def _max_positions(model: nn.Module) -> int | None:
    config = _text_config(model)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_decoder_layers(base: nn.Module, expected: int | None) -> nn.ModuleList:
    """The shallowest ModuleList of identical blocks, of the configured layer count when known."""
    candidates: list[tuple[int, nn.ModuleList]] = []
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(b) for b in module}) == 1:
            candidates.append((name.count("."), module))
    if expected is not None:
        exact = [c for c in candidates if len(c[1]) == expected]
        candidates = exact or candidates
    if not candidates:
        raise TypeError(f"cannot find the decoder layers of {type(base).__name__}: no ModuleList of blocks")
    candidates.sort(key=lambda c: (c[0], -len(c[1])))
    return candidates[0][1]


def find_final_norm(base: nn.Module, layers: nn.ModuleList) -> nn.Module | None:
    """The norm the base model applies after its blocks: the first *Norm child registered after them."""
    seen_layers = False
    for child in base.children():
        if child is layers:
            seen_layers = True
        elif seen_layers and "norm" in type(child).__name__.lower():
            return child
    return None


def prompt_prefix_ids(tokenizer) -> list[int]:
    """Tokens to put before every prompt: none when the tokenizer adds its BOS, else the fallback."""
    bos = tokenizer.bos_token_id
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    without = tokenizer("x", add_special_tokens=False)["input_ids"]
    if bos is not None and with_special[:1] == [bos] and without[:1] != [bos]:
        return []
    return list(tokenizer(FALLBACK_PREFIX, add_special_tokens=False)["input_ids"])
