"""The greedy next token, argmax of ``unembedding(hidden)``, without the full float32 logits.

With a 262k-token vocabulary the unembedding is most of a last-token forward. The exact float32 argmax
is found in two steps:

1. a bfloat16 product over the whole vocabulary (the CPU's bf16 matrix units run it several times faster)
   gives approximate logits; their maximum per vocabulary slice is kept;
2. exact float32 logits are computed, per row, only for the vocabulary slices that can still hold that
   row's maximum: a slice is skipped when its approximate maximum plus an error bound is below an exact
   logit already found for the row. The bound is ``|h| * max_v |w_v| * 2**-5``: bf16 keeps 8 significant bits, so
   rounding ``h`` and ``w_v`` and the result moves ``h . w_v`` by at most about ``3 * 2**-8 * sum_i
   |h_i w_vi| <= 3 * 2**-8 * |h| |w_v|`` (Cauchy-Schwarz); ``2**-5`` leaves a margin of 2.7 over that.

The result is the float32 argmax (first index on ties). One caveat, as for any change of batch shape:
the float32 product of a subset of rows can differ from the full product in the last bit, so two tokens
whose logits are equal to float32 rounding (e.g. duplicated embedding rows) may resolve to the other one.
The benchmark (``bench/bench_run.py``) checks that the full run's predictions are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taskvec.engine.numerics import check_finite
from taskvec.models.devices import weights_offloaded

VOCAB_SLICE = 4096
ERROR_BOUND_FACTOR = 2.0**-5
_MIN_ROWS = 8  # below this many rows the bf16 pass does not pay for itself


def _bf16_copy(unembedding: nn.Module) -> tuple[torch.Tensor, float]:
    """The unembedding in bfloat16 and its largest row norm, cached on the module (rebuilt if the weight
    changes)."""
    weight = unembedding.weight
    key = (weight.data_ptr(), weight._version, tuple(weight.shape))
    cached = getattr(unembedding, "_taskvec_bf16", None)
    if cached is None or cached[0] != key:
        copy = weight.detach().to(torch.bfloat16)
        max_norm = float(weight.detach().norm(dim=1).max())
        cached = (key, copy, max_norm)
        unembedding._taskvec_bf16 = cached  # a plain attribute: not a parameter or buffer
    return cached[1], cached[2]


def shortlist_applies(unembedding: nn.Module, hidden: torch.Tensor) -> bool:
    weight = unembedding.weight
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and getattr(unembedding, "bias", None) is None
        and hidden.shape[0] >= _MIN_ROWS
    )


@torch.no_grad()
def exact_argmax_with_shortlist(
    unembedding: nn.Module, hidden: torch.Tensor, slice_rows: int = VOCAB_SLICE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best logit, index) per row of the float32 ``unembedding(hidden)``, skipping slices that cannot win."""
    weight = unembedding.weight
    w16, max_norm = _bf16_copy(unembedding)
    n, vocab = hidden.shape[0], weight.shape[0]
    n_slices = -(-vocab // slice_rows)
    h16 = hidden.to(torch.bfloat16)
    approx_max = torch.empty(n, n_slices)
    for s in range(n_slices):
        start = s * slice_rows
        approx_max[:, s] = F.linear(h16, w16[start : start + slice_rows]).float().amax(dim=-1)
    bound = hidden.norm(dim=1) * max_norm * ERROR_BOUND_FACTOR + 1e-3  # (n,)
    best_value = torch.full((n,), -torch.inf)
    best_index = torch.zeros(n, dtype=torch.long)
    done = torch.zeros(n, n_slices, dtype=torch.bool)

    def exact(s: int, rows: torch.Tensor) -> None:
        start = s * slice_rows
        value, index = F.linear(hidden[rows], weight[start : start + slice_rows]).float().max(dim=-1)
        index = index + start
        old_value, old_index = best_value[rows], best_index[rows]
        better = (value > old_value) | ((value == old_value) & (index < old_index))  # first index on ties
        best_value[rows] = torch.where(better, value, old_value)
        best_index[rows] = torch.where(better, index, old_index)
        done[rows, s] = True

    # Each row's most promising slice first, then every slice that can still beat the row's best exact logit.
    top = approx_max.argmax(dim=1)
    for s in top.unique().tolist():
        exact(s, (top == s).nonzero()[:, 0])
    while True:
        open_ = (~done) & (approx_max + bound[:, None] >= best_value[:, None])
        if not open_.any():
            break
        for s in open_.any(dim=0).nonzero()[:, 0].tolist():
            exact(s, open_[:, s].nonzero()[:, 0])
    return best_value, best_index


def argmax_over_vocab(
    unembedding: torch.nn.Module, hidden: torch.Tensor, slice_rows: int = VOCAB_SLICE
) -> torch.Tensor:
    """argmax of ``unembedding(hidden)`` (first index on ties), one slice of the vocabulary at a time."""
    if weights_offloaded(unembedding):  # accelerate brings the weights in for a forward call only
        return unembedding(hidden).float().argmax(dim=-1).cpu()
    weight = unembedding.weight
    bias = getattr(unembedding, "bias", None)
    hidden = hidden.to(device=weight.device, dtype=weight.dtype)
    if shortlist_applies(unembedding, hidden):  # float32 on the CPU: skip the slices that cannot win
        value, index = exact_argmax_with_shortlist(unembedding, hidden, slice_rows)
        check_finite(value, "top logits", weight.dtype)
        return index
    best_value = torch.full((hidden.shape[0],), -torch.inf, device=weight.device)
    best_index = torch.zeros(hidden.shape[0], dtype=torch.long, device=weight.device)
    for start in range(0, weight.shape[0], slice_rows):
        stop = start + slice_rows
        logits = F.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop])
        value, index = logits.float().max(dim=-1)
        better = value > best_value  # strict: an earlier slice keeps ties
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    check_finite(best_value, "top logits", weight.dtype)
    return best_index.cpu()
