"""Vocabulary projection ("logit lens"): a residual-stream vector read out through the model's own head.

The vector goes through the final norm the base model applies after its last block (every family,
GPT-J's ``ln_f`` included), the unembedding (with its bias where it has one), and the final logit
soft-capping of models that configure it (``final_logit_softcapping``, e.g. Gemma-2). Applied to the last
block's output, this reproduces the model's own next-token logits.
"""

from __future__ import annotations

import torch

from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel


def logit_softcap(lm: LoadedModel) -> float | None:
    """The model's final logit soft-capping value, or None when it has none."""
    config = lm.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def vocab_size(lm: LoadedModel) -> int:
    return int(lm.adapter.unembedding.weight.shape[0])


@torch.no_grad()
def project_to_vocab(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) float32 on the CPU of residual-stream vectors ``hidden`` (N, H) or (H,)."""
    if hidden.dim() == 1:
        hidden = hidden.unsqueeze(0)
    weight = lm.adapter.unembedding.weight
    if hidden.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise TaskvecError(
            f"cannot project a tensor of shape {tuple(hidden.shape)}: expected (N, {weight.shape[-1]}) vectors "
            "of this model's hidden size"
        )
    x = hidden.to(device=weight.device, dtype=weight.dtype)
    norm = lm.adapter.final_norm
    if norm is not None:
        param = next(norm.parameters(), None)
        x = norm(x.to(param.device) if param is not None else x)
    logits = lm.adapter.unembedding(x.to(weight.device)).float()
    cap = logit_softcap(lm)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.cpu()


def _is_word(text: str) -> bool:
    return text.isalpha()


def top_tokens(
    lm: LoadedModel, logits: torch.Tensor, k: int, *, words_only: bool = False
) -> list[list[tuple[str, float]]]:
    """The ``k`` highest-scoring tokens of each row of ``logits`` (N, V) as (decoded text, logit).

    With ``words_only``, tokens whose stripped text is not alphabetic are skipped and a word already
    listed (compared lower-cased, without spaces) is not listed again; fewer than ``k`` may remain.
    """
    size = logits.shape[-1]
    _check_k(k, size)
    out = []
    for row in logits:
        order = torch.argsort(row, descending=True, stable=True)
        picked: list[tuple[str, float]] = []
        seen: set[str] = set()
        for start in range(0, size, 4 * k):
            for token_id in order[start : start + 4 * k].tolist():
                text = lm.tokenizer.decode([token_id])
                if words_only:
                    key = "".join(text.split()).lower()
                    if not _is_word(text.strip()) or key in seen:
                        continue
                    seen.add(key)
                picked.append((text, float(row[token_id])))
                if len(picked) == k:
                    break
            if len(picked) == k or not words_only:
                break
        out.append(picked)
    return out


def projected_top_tokens(
    lm: LoadedModel, vectors: torch.Tensor, k: int, *, words_only: bool = False
) -> list[list[tuple[str, float]]]:
    """:func:`top_tokens` of :func:`project_to_vocab` of ``vectors`` (N, H)."""
    return top_tokens(lm, project_to_vocab(lm, vectors), k, words_only=words_only)


def check_top_k(lm: LoadedModel, k: int) -> int:
    """``k`` when it is between 1 and the vocabulary size, else a clear error."""
    return _check_k(k, vocab_size(lm))


def _check_k(k: int, size: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= size:
        raise TaskvecError(f"top-k must be an integer from 1 to the vocabulary size {size}, got {k!r}")
    return k
