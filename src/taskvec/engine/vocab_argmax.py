"""The greedy next token, argmax of ``unembedding(hidden)``, without the full float32 logits.

With a 262k-token vocabulary the unembedding is most of a last-token forward. The exact float32 argmax
is found in two steps:

1. a bfloat16 product over the whole vocabulary (the CPU's bf16 matrix units run it several times faster)
   gives approximate logits; their maximum per vocabulary slice is kept;
2. exact float32 logits are computed, per row, only for the vocabulary slices that can still hold that
   row's maximum: a slice is skipped when its approximate maximum plus an error bound is below an exact
   logit already found for the row. bf16 keeps 8 significant bits (unit roundoff u = 2**-8), so rounding
   ``h`` and ``w_v`` moves ``h . w_v`` by at most ``(2u + u**2) sum_i |h_i w_vi|``, float32 accumulation over
   H terms adds at most ``H * 2**-24`` of the same sum, and rounding the result to bf16 ``u |result|``. Per
   slice, ``sum_i |h_i w_vi| <= sum_i |h_i| max_{v in slice} |w_vi|`` (one small product per row), and the
   bound used is ``2.5u`` (resp. ``H * 2**-23``, ``1.01u``) of these: larger than the worst case.

The result is the float32 argmax (first index on ties). One caveat, as for any change of batch shape:
the float32 product of a subset of rows can differ from the full product in the last bit, so two tokens
whose logits are equal to float32 rounding (e.g. duplicated embedding rows) may resolve to the other one.
The benchmark (``bench/bench_run.py``) checks that the full run's predictions are unchanged.
"""

from __future__ import annotations

import functools
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from taskvec.engine.numerics import check_finite
from taskvec.models.devices import weights_offloaded

logger = logging.getLogger(__name__)

VOCAB_SLICE = 4096
_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
MARGIN_RESOLUTION = 0.5  # with margins asked for, gaps below this many logits are exact (others: lower bounds)


class ShortlistCache:
    """The unembedding in bfloat16 and, per vocabulary slice, the largest magnitude of each coordinate
    (n_slices, H), made once and kept by whoever owns this object (a fast executor), not on the model;
    made again if the weight changes."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def weights(self, unembedding: nn.Module, slice_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = unembedding.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), slice_rows)
        if self._value is None or self._key != key:
            copy = weight.detach().to(torch.bfloat16)
            col_max = torch.stack([w.abs().amax(dim=0) for w in weight.detach().split(slice_rows)])
            self._key, self._value = key, (copy, col_max)
        return self._value


def shortlist_applies(unembedding: nn.Module, hidden: torch.Tensor) -> bool:
    weight = unembedding.weight
    return (
        weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and getattr(unembedding, "bias", None) is None
        and hidden.shape[0] > 0
        and bf16_products_fast()
    )


@functools.cache
def bf16_products_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices at least twice as fast as float32 ones (bf16 matrix
    units). Without them (e.g. some AMD EPYC) a bfloat16 product is several times *slower*, and the shortlist
    would cost more than the full float32 logits it avoids. Measured once per process (well under a second)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 256, generator=gen), torch.randn(256, 1024, generator=gen)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    fast = best(a.bfloat16(), b.bfloat16()) < 0.5 * best(a, b)
    logger.info("bfloat16 products are %s than float32 on this CPU: vocabulary shortlist %s",
                "faster" if fast else "not faster", "on" if fast else "off")  # fmt: skip
    return fast


def top_two_gap(logits: torch.Tensor) -> torch.Tensor:
    """Best minus second-best value of each row (0 on a tie)."""
    values = logits.topk(min(2, logits.shape[-1]), dim=-1).values
    return values[:, 0] - values[:, -1]


class _TopTwo:
    """Per row: the best logit and its index (first index on ties) and the runner-up logit."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.value = torch.full((n,), -torch.inf, device=device)
        self.index = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long, device=device)
        self.second = torch.full((n,), -torch.inf, device=device)

    def merge(self, rows: torch.Tensor | slice, logits: torch.Tensor, start: int) -> None:
        """Merge the logits (r, k) of vocabulary ``start..start+k`` into rows ``rows``."""
        logits = logits.float()
        value, index = logits.max(dim=-1)  # the first index on ties
        second = value - top_two_gap(logits)
        index = index + start
        old_value, old_index, old_second = (t[rows].clone() for t in (self.value, self.index, self.second))
        better = (value > old_value) | ((value == old_value) & (index < old_index))
        self.value[rows] = torch.where(better, value, old_value)
        self.index[rows] = torch.where(better, index, old_index)
        # The runner-up: the larger of the loser's best and both seconds.
        self.second[rows] = torch.maximum(torch.where(better, old_value, value), torch.maximum(second, old_second))

    def margin(self) -> torch.Tensor:
        return self.value - self.second


@torch.no_grad()
def exact_argmax_with_shortlist(
    unembedding: nn.Module,
    hidden: torch.Tensor,
    slice_rows: int = VOCAB_SLICE,
    resolution: float = 0.0,
    cache: ShortlistCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best logit, index, margin) per row of the float32 ``unembedding(hidden)``, skipping slices that
    cannot win. ``margin`` is a lower bound of the gap between the best and the second-best logit; it is
    the gap itself when that is below ``resolution`` (slices that could hold such a runner-up are opened).
    ``cache`` keeps the bfloat16 copy between calls (without it, one is made for this call)."""
    weight = unembedding.weight
    w16, col_max = (cache or ShortlistCache()).weights(unembedding, slice_rows)
    n, vocab = hidden.shape[0], weight.shape[0]
    n_slices = -(-vocab // slice_rows)
    h16 = hidden.to(torch.bfloat16)
    approx_max = torch.empty(n, n_slices)
    for s in range(n_slices):
        start = s * slice_rows
        approx_max[:, s] = F.linear(h16, w16[start : start + slice_rows]).float().amax(dim=-1)
    # |approx - exact| <= (2u + u^2) sum_i |h_i w_vi| (rounding h and w) + fp32 accumulation
    # + u |approx| (rounding the result); sum_i |h_i w_vi| <= sum_i |h_i| max_{v in slice} |w_vi|.
    abs_products = hidden.abs() @ col_max.T  # (n, n_slices)
    bound = abs_products * (2.5 * _U + hidden.shape[1] * 2.0**-23) + approx_max.abs() * (1.01 * _U) + 1e-6
    upper = approx_max + bound  # no logit of the slice exceeds this
    top = _TopTwo(n)
    done = torch.zeros(n, n_slices, dtype=torch.bool)

    def exact(s: int, rows: torch.Tensor) -> None:
        start = s * slice_rows
        top.merge(rows, F.linear(hidden[rows], weight[start : start + slice_rows]), start)
        done[rows, s] = True

    # Each row's most promising slice first, then every slice that can still beat the row's best exact logit.
    first = approx_max.argmax(dim=1)
    for s in first.unique().tolist():
        exact(s, (first == s).nonzero()[:, 0])
    while True:
        open_ = (~done) & (upper >= top.value[:, None] - resolution)
        if not open_.any():
            break
        for s in open_.any(dim=0).nonzero()[:, 0].tolist():
            exact(s, open_[:, s].nonzero()[:, 0])
    unopened = upper.masked_fill(done, -torch.inf).amax(dim=1)
    margin = top.value - torch.maximum(top.second, unopened)
    return top.value, top.index, margin


def argmax_over_vocab(
    unembedding: torch.nn.Module, hidden: torch.Tensor, slice_rows: int = VOCAB_SLICE
) -> torch.Tensor:
    """argmax of ``unembedding(hidden)`` (first index on ties), one slice of the vocabulary at a time."""
    return argmax_and_margin(unembedding, hidden, slice_rows)[0]


def argmax_and_margin(
    unembedding: torch.nn.Module,
    hidden: torch.Tensor,
    slice_rows: int = VOCAB_SLICE,
    *,
    with_margin: bool = False,
    cache: ShortlistCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`argmax_over_vocab`, and with ``with_margin`` the gap between the best and the second-best
    logit of each row: how close the call was (exact below ``MARGIN_RESOLUTION``, a lower bound above
    it); None without."""
    if weights_offloaded(unembedding):  # accelerate brings the weights in for a forward call only
        logits = unembedding(hidden).float()
        return logits.argmax(dim=-1).cpu(), top_two_gap(logits).cpu() if with_margin else None
    weight = unembedding.weight
    bias = getattr(unembedding, "bias", None)
    hidden = hidden.to(device=weight.device, dtype=weight.dtype)
    if shortlist_applies(unembedding, hidden):  # float32 on the CPU: skip the slices that cannot win
        resolution = MARGIN_RESOLUTION if with_margin else 0.0
        value, index, margin = exact_argmax_with_shortlist(unembedding, hidden, slice_rows, resolution, cache)
        check_finite(value, "top logits", weight.dtype)
        return index, margin if with_margin else None
    top = _TopTwo(hidden.shape[0], device=weight.device)
    everything = slice(None)
    for start in range(0, weight.shape[0], slice_rows):
        stop = start + slice_rows
        top.merge(everything, F.linear(hidden, weight[start:stop], None if bias is None else bias[start:stop]), start)
    check_finite(top.value, "top logits", weight.dtype)
    return top.index.cpu(), top.margin().cpu() if with_margin else None
