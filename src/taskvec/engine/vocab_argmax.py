"""The greedy next token, argmax of ``unembedding(hidden)``, without the full float32 logits.

With a 262k-token vocabulary the unembedding is most of a last-token forward. The exact float32 argmax
is found in two steps:

1. a bfloat16 product over the whole vocabulary (the CPU's bf16 matrix units run it several times faster)
   gives approximate logits; their maximum per vocabulary slice is kept;
2. exact float32 logits are computed, per row, only for the vocabulary slices that can still hold that
   row's maximum: a slice is skipped when its approximate maximum plus an error bound is below an exact
   logit already found for the row.

The bound. Write ``h = h16 + e`` and ``w_v = w16_v + d_v`` (the bf16 roundings and their exact float32
remainders). Then ``h . w_v = h16 . w16_v + e . w_v + h16 . d_v``, so by Cauchy-Schwarz the bf16 product is off
by at most ``|e| |w_v| + |h16| |d_v|``; the kernel's float32 accumulation of the (exact) bf16 products adds at
most ``H 2**-24 |h16| |w16_v|``, rounding the result to bf16 at most ``u/(1-u) |approx|`` (u = 2**-8), and the
float32 logits themselves are within ``H 2**-24 |h| |w_v|`` of ``h . w_v``. Per slice the row norms of ``w``,
``d`` and ``w16`` are replaced by their largest value in the slice (kept with the bf16 copy), and the sum is
taken 1% larger plus 1e-5 for the rounding of the norms. This follows the actual rounding of ``h`` and ``w``
rather than its worst case, and is about twenty times tighter than a bound on ``sum_i |h_i w_vi|``: on
gemma-3-270m (hidden norm ~110, logits ~20 apart from the slices' maxima by several units) it is ~0.5,
so most rows open one slice.

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
    """The unembedding in bfloat16 and, per vocabulary slice, the largest row norm of the weight, of its bf16
    rounding error and of its bf16 copy (n_slices, 3), made once and kept by whoever owns this object (a fast
    executor), not on the model; made again if the weight changes."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def weights(self, unembedding: nn.Module, slice_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = unembedding.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), slice_rows)
        if self._value is None or self._key != key:
            copy = weight.detach().to(torch.bfloat16)
            norms = []
            for w, w16 in zip(weight.detach().split(slice_rows), copy.split(slice_rows)):
                w16 = w16.float()
                norms.append(torch.stack([w.norm(dim=1).amax(), (w - w16).norm(dim=1).amax(), w16.norm(dim=1).amax()]))
            self._key, self._value = key, (copy, torch.stack(norms))
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
    """Whether this CPU multiplies bfloat16 matrices clearly faster than float32 ones (bf16 matrix units: in
    under 0.75 of the time; the shortlist's bf16 pass is then most of its cost, as its bound opens few float32
    slices). Without them a bfloat16 product is several times *slower*, and the shortlist would cost more
    than the full float32 logits it avoids. Measured once per process (~0.1 s) on a product of
    an unembedding slice's shape: the median of five best-of-three ratios. (A smaller product, 32 x 256 x 1024,
    measured 0.47-0.59 on a 2-core EPYC whose bf16 units run real slices at 0.35-0.48: with a threshold of
    0.5 the decision flipped from one process to the next.)"""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 640, generator=gen), torch.randn(640, 4096, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    best(a16, b16), best(a, b)  # warm-up (kernel selection, first-touch of the buffers)
    ratio = sorted(best(a16, b16) / best(a, b) for _ in range(5))[2]
    fast = ratio < 0.75
    logger.info("bfloat16 products take %.2f of the float32 time on this CPU: vocabulary shortlist %s",
                ratio, "on" if fast else "off")  # fmt: skip
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


def slice_bound(hidden: torch.Tensor, h16: torch.Tensor, slice_norms: torch.Tensor) -> torch.Tensor:
    """(n, n_slices): how far a slice's bf16 products (before their rounding to bf16) and float32 logits can
    be apart, from the norms of ``hidden``, of its bf16 rounding error and of the slice's rows (see the module
    docstring)."""
    gamma = hidden.shape[1] * 2.0**-24
    h_norm, e_norm = hidden.norm(dim=1, keepdim=True), (hidden - h16.float()).norm(dim=1, keepdim=True)
    h16_norm = h16.float().norm(dim=1, keepdim=True)
    w_norm, d_norm, w16_norm = slice_norms.T
    spread = e_norm * w_norm + h16_norm * d_norm + gamma * (h16_norm * w16_norm + h_norm * w_norm)
    return spread * 1.01 + 1e-5


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
    w16, slice_norms = (cache or ShortlistCache()).weights(unembedding, slice_rows)
    n, vocab = hidden.shape[0], weight.shape[0]
    n_slices = -(-vocab // slice_rows)
    h16 = hidden.to(torch.bfloat16)
    approx_max = torch.empty(n, n_slices)
    for s in range(n_slices):
        start = s * slice_rows
        approx_max[:, s] = F.linear(h16, w16[start : start + slice_rows]).amax(dim=-1).float()
    bound = slice_bound(hidden, h16, slice_norms) + approx_max.abs() * (_U / (1 - _U))
    upper = approx_max + bound  # no float32 logit of the slice exceeds this
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
