"""Applying interventions (:mod:`taskvec.core.sites`) during a forward pass, with hooks.

Rows of one batch may carry different edits, and a row several: the edits are grouped by (kind, site), and
each group is one hook that writes all its rows at once. A block site is the block's output (a forward
hook); a head site is that head's slice of the input of the attention output projection (a forward pre-hook
on the projection). Every hook is removed on exit, also when the forward raises.

Which columns of a forward's input a site's position covers depends on what the forward runs (a
:class:`Span`): the whole prompt (the default), one or more generated tokens under a key/value cache
(``prompt_end=0``), or a prompt followed by generated tokens (``prompt_end`` = the prompt's padded length).
An integer position counts back from the prompt's end; a forward without prompt columns skips it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from taskvec.core.sites import ALL, GENERATED, PROMPT, Add, Read, Replace, RowEdits, Site, Steer, row_edits
from taskvec.engine.hooks import hidden_of, registered, with_hidden
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.head_sites import HeadSite, adapter_head_sites

#: Norms below this are treated as this (a pad column's state may be tiny; never divide by zero).
_EPS = 1e-6


@dataclass
class Span:
    """The columns of the current forward's input that are prompt tokens: the first ``prompt_end`` (None:
    all of them). A generation loop sets it before each forward (:mod:`taskvec.engine.generation`)."""

    prompt_end: int | None = None


def columns(position: int | str, width: int, span: Span | None) -> int | slice | None:
    """The input columns a site position covers in a forward of ``width`` columns (None: none)."""
    end = width if span is None or span.prompt_end is None else min(span.prompt_end, width)
    if isinstance(position, int):
        col = end + position
        return col if 0 <= col < end else None
    if position == PROMPT:
        return slice(0, end) if end > 0 else None
    if position == GENERATED:
        return slice(end, width) if end < width else None
    if position == ALL:
        return slice(0, width)
    raise ValueError(f"unknown site position {position!r}")


@dataclass
class _Group:
    rows: torch.Tensor | None  # None: every row of the batch
    values: torch.Tensor  # (R, D), or (1, D) for every row
    strengths: torch.Tensor | None  # Steer: (R,)


def _group(edits: Sequence[RowEdits], every_row: Sequence[RowEdits]) -> dict[tuple[type, Site, bool], _Group]:
    """{(kind, site, for every row): the rows and their values}, in the order the sites first appear."""
    rows: dict[tuple[type, Site, bool], list[tuple[int, object]]] = {}
    for row, entry in enumerate(edits):
        for edit in row_edits(entry):
            items = rows.setdefault((type(edit), edit.site, False), [])
            if items and items[-1][0] == row:  # a second edit of this row at the same site
                if not isinstance(edit, Add):
                    raise ValueError(f"row {row} has two {type(edit).__name__} edits at {edit.site}; expected one")
                items[-1] = (row, Add(edit.site, items[-1][1].value + edit.value))
            else:
                items.append((row, edit))
    for entry in every_row:
        for edit in row_edits(entry):
            rows.setdefault((type(edit), edit.site, True), []).append((-1, edit))
    groups = {}
    for key, items in rows.items():
        values = torch.stack([e.value for _, e in items])
        strengths = torch.tensor([float(e.strength) for _, e in items]) if key[0] is Steer else None
        if key[2]:  # edits for every row at one site add up (a Steer or Replace: the last one wins)
            values = values.sum(0, keepdim=True) if key[0] is Add else values[-1:]
            strengths = None if strengths is None else strengths[-1:]
            groups[key] = _Group(None, values, strengths)
        else:
            groups[key] = _Group(torch.tensor([r for r, _ in items], dtype=torch.long), values, strengths)
    return groups


def _steered(x: torch.Tensor, v: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """In-Context Vectors' rule on states ``x`` (R, C, D) with vectors ``v`` (R, 1, D) and strengths (R, 1, 1)."""
    x32, v32 = x.float(), v.float()
    norm = x32.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    unit_v = v32 / v32.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    against = torch.nn.functional.cosine_similarity(x32, -v32.expand_as(x32), dim=-1, eps=_EPS).clamp_min(0.0)
    moved = x32 / norm + strength.float() * (1.0 + against[..., None]) * unit_v
    return (moved / moved.norm(dim=-1, keepdim=True).clamp_min(_EPS) * norm).to(x.dtype)


def _write(target: torch.Tensor, kind: type, group: _Group, cols: int | slice) -> torch.Tensor:
    out = target.clone()
    values = group.values.to(device=target.device, dtype=target.dtype)
    rows = slice(None) if group.rows is None else group.rows.to(target.device)
    if isinstance(cols, slice):
        values = values[:, None, :]
    if kind is Replace:
        out[rows, cols, :] = values
    elif kind is Add:
        out[rows, cols, :] += values
    else:
        strength = group.strengths.to(target.device)[:, None, None]
        part = out[rows, cols, :]
        if not isinstance(cols, slice):
            part, values = part[:, None, :], values[:, None, :]
        steered = _steered(part, values, strength)
        out[rows, cols, :] = steered if isinstance(cols, slice) else steered[:, 0, :]
    return out


def _head_site(adapter: ArchitectureAdapter | None, layer: int, head: int) -> HeadSite:
    """Where head ``head`` of block ``layer`` is (:mod:`taskvec.models.head_sites`, the one head locator)."""
    if adapter is None:
        raise TypeError("a head site needs the model's adapter (pass lm.adapter to intervene)")
    site = adapter_head_sites(adapter)[layer]
    if not 0 <= head < site.n_heads:
        raise ValueError(f"head {head} is out of range: this model has heads 0..{site.n_heads - 1}")
    return site


def _head_slice(site: HeadSite, head: int) -> slice:
    return slice(head * site.head_dim, (head + 1) * site.head_dim)


def _edit_hook(
    blocks: nn.ModuleList, adapter: ArchitectureAdapter | None, kind: type, site: Site, group: _Group,
    span: Span | None,
):  # fmt: skip
    block: nn.Module = blocks[site.layer]
    if site.head is None:

        def on_block(module, args, output):
            hidden = hidden_of(output)
            cols = columns(site.position, hidden.shape[1], span)
            return None if cols is None else with_hidden(output, _write(hidden, kind, group, cols))

        return block.register_forward_hook(on_block)

    heads = _head_site(adapter, site.layer, site.head)
    part = _head_slice(heads, site.head)

    def on_heads(module, args):
        x = args[0]
        cols = columns(site.position, x.shape[1], span)
        if cols is None:
            return None
        out = x.clone()
        out[..., part] = _write(x[..., part], kind, group, cols)
        return (out, *args[1:])

    return heads.out_proj.register_forward_pre_hook(on_heads)


def _read_hook(
    blocks: nn.ModuleList, adapter: ArchitectureAdapter | None, site: Site, store: dict[Site, torch.Tensor],
    span: Span | None,
):  # fmt: skip
    if not site.one_token:
        raise ValueError(f"a read site must be one prompt token (a negative integer position), got {site.position!r}")
    block: nn.Module = blocks[site.layer]
    if site.head is None:

        def on_block(module, args, output):
            hidden = hidden_of(output)
            col = columns(site.position, hidden.shape[1], span)
            if col is not None:
                store[site] = hidden[:, col, :].detach()

        return block.register_forward_hook(on_block)

    heads = _head_site(adapter, site.layer, site.head)
    part = _head_slice(heads, site.head)

    def on_heads(module, args):
        x = args[0]
        col = columns(site.position, x.shape[1], span)
        if col is not None:
            store[site] = x[:, col, part].detach()

    return heads.out_proj.register_forward_pre_hook(on_heads)


@contextmanager
def intervene(
    model: ArchitectureAdapter | nn.ModuleList,
    edits: Sequence[RowEdits] = (),
    reads: Sequence[Read] = (),
    store: dict[Site, torch.Tensor] | None = None,
    *,
    span: Span | None = None,
    every_row: Sequence[RowEdits] = (),
) -> Iterator[None]:
    """Inside the block, forwards apply ``edits[i]`` (an edit, several, or None) to batch row i, and
    ``every_row``'s edits to every row of whatever batch runs, and record each read site into ``store[site]``
    (B, D), read after the edits of the same site. ``span`` says which columns are prompt tokens (default:
    all). ``model`` is the model's adapter, or just its decoder blocks when no site names a head."""
    adapter = model if isinstance(model, ArchitectureAdapter) else None
    blocks = model.layers if isinstance(model, ArchitectureAdapter) else model
    if reads and store is None:
        raise ValueError("reads need a store to record into")
    sites = [e.site for entry in (*edits, *every_row) for e in row_edits(entry)] + [r.site for r in reads]
    if adapter is not None and any(site.head is not None for site in sites):
        adapter_head_sites(adapter)  # found (once per adapter) before any hook of this block is registered
    handles: list = []
    with registered(handles):  # removes whatever was registered, also if a later registration fails
        for (kind, site, _), group in _group(edits, every_row).items():
            handles.append(_edit_hook(blocks, adapter, kind, site, group, span))
        for read in reads:
            handles.append(_read_hook(blocks, adapter, read.site, store, span))
        yield
