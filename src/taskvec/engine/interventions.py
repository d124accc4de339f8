"""Applying interventions (:mod:`taskvec.core.sites`) during a forward pass, with hooks.

Rows of one batch may carry different edits: the edits are grouped by (kind, site), and each group is
one hook that writes all its rows at once. A block site is the block's output (a forward hook); a head
site is that head's slice of the input of the attention output projection (a forward pre-hook on the
projection). Every hook is removed on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from taskvec.core.sites import Add, Edit, Read, Replace, Site
from taskvec.engine.hooks import hidden_of, registered, with_hidden
from taskvec.models.adapter import ArchitectureAdapter, attention_heads, attention_output


def _group(
    edits: Sequence[Edit | Sequence[Edit] | None],
) -> dict[tuple[type, Site], tuple[torch.Tensor, torch.Tensor]]:
    """{(kind, site): (row indices, values (R, D))}, in the order the sites first appear."""
    rows: dict[tuple[type, Site], list[tuple[int, torch.Tensor]]] = {}
    for row, entry in enumerate(edits):
        for edit in () if entry is None else (entry,) if isinstance(entry, (Replace, Add)) else entry:
            if not isinstance(edit, (Replace, Add)):
                raise TypeError(f"expected Replace or Add edits for a row, got {edit!r}")
            rows.setdefault((type(edit), edit.site), []).append((row, edit.value))
    return {
        key: (torch.tensor([r for r, _ in items], dtype=torch.long), torch.stack([v for _, v in items]))
        for key, items in rows.items()
    }


def _write(target: torch.Tensor, kind: type, rows: torch.Tensor, position: int, values: torch.Tensor) -> torch.Tensor:
    out = target.clone()
    values = values.to(device=target.device, dtype=target.dtype)
    rows = rows.to(target.device)
    if kind is Replace:
        out[rows, position, :] = values
    else:
        out[rows, position, :] += values
    return out


def _head_slice(adapter: ArchitectureAdapter | None, width: int, head: int) -> slice:
    if adapter is None:
        raise TypeError("a head site needs the model's adapter (pass lm.adapter to intervene)")
    n_heads = attention_heads(adapter)
    size = width // n_heads
    if not 0 <= head < n_heads:
        raise ValueError(f"head {head} is out of range: this model has heads 0..{n_heads - 1}")
    return slice(head * size, (head + 1) * size)


def _edit_hook(
    blocks: nn.ModuleList, adapter: ArchitectureAdapter | None, kind: type, site: Site, rows: torch.Tensor,
    values: torch.Tensor,
):
    block: nn.Module = blocks[site.layer]
    if site.head is None:

        def on_block(module, args, output):
            return with_hidden(output, _write(hidden_of(output), kind, rows, site.position, values))

        return block.register_forward_hook(on_block)

    def on_heads(module, args):
        x = args[0]
        part = _head_slice(adapter, x.shape[-1], site.head)
        out = x.clone()
        out[..., part] = _write(x[..., part], kind, rows, site.position, values)
        return (out, *args[1:])

    return attention_output(block).register_forward_pre_hook(on_heads)


def _read_hook(
    blocks: nn.ModuleList, adapter: ArchitectureAdapter | None, site: Site, store: dict[Site, torch.Tensor]
):
    block: nn.Module = blocks[site.layer]
    if site.head is None:

        def on_block(module, args, output):
            store[site] = hidden_of(output)[:, site.position, :].detach()

        return block.register_forward_hook(on_block)

    def on_heads(module, args):
        x = args[0]
        store[site] = x[:, site.position, _head_slice(adapter, x.shape[-1], site.head)].detach()

    return attention_output(block).register_forward_pre_hook(on_heads)


@contextmanager
def intervene(
    model: ArchitectureAdapter | nn.ModuleList,
    edits: Sequence[Edit | Sequence[Edit] | None] = (),
    reads: Sequence[Read] = (),
    store: dict[Site, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Inside the block, forwards apply ``edits[i]`` (an edit, several, or None) to batch row i and record
    each read site into ``store[site]`` (B, D), read after the edits of the same site. ``model`` is the
    model's adapter, or just its decoder blocks when no site names a head."""
    adapter = model if isinstance(model, ArchitectureAdapter) else None
    blocks = model.layers if isinstance(model, ArchitectureAdapter) else model
    if reads and store is None:
        raise ValueError("reads need a store to record into")
    handles: list = []
    with registered(handles):  # removes whatever was registered, also if a later registration fails
        for (kind, site), (rows, values) in _group(edits).items():
            handles.append(_edit_hook(blocks, adapter, kind, site, rows, values))
        for read in reads:
            handles.append(_read_hook(blocks, adapter, read.site, store))
        yield

