"""Hooks for head-level work: read or replace heads' outputs at the last position, add to a block output.

Head outputs are the input of a block's attention output projection, (B, T, heads * head_dim) in head
order; a forward *pre*-hook sees them under every attention implementation (eager, sdpa). Every
context manager removes its hooks on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from taskvec.engine.hooks import hidden_of, registered, with_hidden
from taskvec.models.head_sites import HeadSite


@contextmanager
def capture_head_outputs(sites: Sequence[HeadSite], store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record ``store[layer]`` = the heads' outputs at the last position, (B, n_heads, head_dim), float32."""

    def make(site: HeadSite):
        def hook(module, args):
            x = args[0]
            store[site.layer] = x[:, -1, :].detach().float().reshape(x.shape[0], site.n_heads, site.head_dim)

        return hook

    handles = [site.out_proj.register_forward_pre_hook(make(site)) for site in sites]
    with registered(handles):
        yield


@dataclass(frozen=True)
class HeadPatch:
    """Set head ``head`` of block ``layer`` to ``value`` (head_dim,) at the last position of batch row ``row``."""

    row: int
    layer: int
    head: int
    value: torch.Tensor


@contextmanager
def patch_heads(sites: Sequence[HeadSite], patches: Sequence[HeadPatch]) -> Iterator[None]:
    """Replace single heads' outputs at the last position; different rows may patch different heads."""
    by_layer: dict[int, list[HeadPatch]] = {}
    for patch in patches:
        by_layer.setdefault(patch.layer, []).append(patch)
    site_of = {site.layer: site for site in sites}

    def make(site: HeadSite, items: list[HeadPatch]):
        rows = torch.tensor([p.row for p in items], dtype=torch.long)
        cols = torch.stack([torch.arange(p.head * site.head_dim, (p.head + 1) * site.head_dim) for p in items])
        values = torch.stack([p.value.reshape(site.head_dim) for p in items])

        def hook(module, args):
            x = args[0]
            patched = x.clone()
            last = patched[:, -1, :]
            r = rows.to(x.device)
            last[r.unsqueeze(1), cols.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
            return (patched, *args[1:])

        return hook

    handles = [site_of[layer].out_proj.register_forward_pre_hook(make(site_of[layer], items))
               for layer, items in by_layer.items()]  # fmt: skip
    with registered(handles):
        yield


@contextmanager
def add_to_block_output(layers: nn.ModuleList, additions: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add ``additions[li]`` to the output of block ``li`` at the last position: an (H,) vector for every row,
    or a (B, H) one per row (zeros leave a row unchanged, exactly)."""

    def make(vector: torch.Tensor):
        def hook(module, args, output):
            hidden = hidden_of(output)
            patched = hidden.clone()
            patched[:, -1, :] += vector.to(device=hidden.device, dtype=hidden.dtype)
            return with_hidden(output, patched)

        return hook

    handles = [layers[layer].register_forward_hook(make(vec)) for layer, vec in additions.items()]
    with registered(handles):
        yield
