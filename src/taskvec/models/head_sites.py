"""Where each decoder block's attention heads live, found from the module structure and its data flow.

For every block of ``lm.adapter.layers``:

- the **attention module** is the block's child whose attribute name contains ``attn`` or
  ``attention`` (``self_attn``, ``attn``, ``attention``) and that holds Linear/Conv1D projections
  (so not ``post_attention_layernorm`` nor gpt_neox's ``post_attention_dropout``);
- its **output projection** is the last ``nn.Linear``/``Conv1D`` of that module to run during a
  2-token probe forward (llama/qwen2/gemma3 ``o_proj``, gpt2 ``c_proj``, gpt_neox ``dense``, gptj
  ``out_proj``): the one whose input is the heads' outputs side by side, (B, T, heads * head_dim);
- the **number of heads** is the configured ``num_attention_heads``/``n_head``, and head_dim the
  projection's input width divided by it;
- a **post-attention norm** is a norm module of the block whose input, in the same probe forward, is
  exactly the projection's output. Gemma2/gemma3 apply ``post_attention_layernorm`` to the attention
  output before the residual add, so it is found; llama/qwen2 apply their ``post_attention_layernorm``
  to the residual *after* the add (the pre-MLP norm), so its input differs and it is not.

No model names are checked. This is the one place heads are located: the interventions' head sites
(:mod:`taskvec.engine.interventions`) and the projection of head outputs (:func:`project_heads`) both use it. The
probe runs the first time a model's adapter is asked, and its result is kept by that adapter
(:func:`adapter_head_sites`), not on the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from taskvec.errors import TaskvecError
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.devices import execution_device
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import MixedLinear

ATTENTION_NAMES = ("attn", "attention")


class HeadSiteError(TaskvecError):
    """The attention heads of a model cannot be located (unsupported module structure)."""


@dataclass(frozen=True)
class HeadSite:
    """One block's attention output projection and what surrounds it."""

    layer: int
    attention: nn.Module
    out_proj: nn.Module  # nn.Linear/MixedLinear (weight (out, in)) or transformers' Conv1D (weight (in, out))
    n_heads: int
    head_dim: int
    post_norm: nn.Module | None  # a norm between the attention output and the residual add, if any

    @property
    def transposed(self) -> bool:
        """True for Conv1D, whose weight is (in, out)."""
        return isinstance(self.out_proj, Conv1D)

    def head_weight(self, head: int) -> torch.Tensor:
        """The (head_dim, hidden) block of the projection that maps this head's output to the residual."""
        cols = slice(head * self.head_dim, (head + 1) * self.head_dim)
        weight = self.out_proj.weight
        return weight[cols, :] if self.transposed else weight[:, cols].T

    def project(self, head_outputs: torch.Tensor) -> torch.Tensor:
        """Each head's contribution in residual space, without the bias: (..., n_heads, head_dim) ->
        (..., n_heads, hidden). Summed over heads plus :meth:`bias` this is the projection's output."""
        weight = self.out_proj.weight.float()
        hidden = weight.shape[1] if self.transposed else weight.shape[0]
        w = weight if self.transposed else weight.T  # (in, out)
        w = w.reshape(self.n_heads, self.head_dim, hidden)
        return torch.einsum("...nd,ndh->...nh", head_outputs.float().to(w.device), w)

    def bias(self) -> torch.Tensor | None:
        """The projection's bias (belongs to no head), float32, or None."""
        bias = getattr(self.out_proj, "bias", None)
        return None if bias is None else bias.detach().float()


def head_sites(lm: LoadedModel) -> list[HeadSite]:
    """The :class:`HeadSite` of every decoder block, in layer order (found once per adapter)."""
    return adapter_head_sites(lm.adapter)


def adapter_head_sites(adapter: ArchitectureAdapter) -> list[HeadSite]:
    """The head sites of the model ``adapter`` handles, found by the probe the first time and kept by the adapter
    (made again if the blocks' modules were replaced since, e.g. by mixed precision)."""
    kept = adapter.head_site_cache
    if kept is None or any(_projection_gone(site) for site in kept):
        kept = _find_sites(adapter)
        adapter.head_site_cache = kept
    return kept


def _projection_gone(site: HeadSite) -> bool:
    return not any(m is site.out_proj for m in site.attention.modules())


def num_heads_config(adapter: ArchitectureAdapter) -> int:
    config = adapter.base_model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_attention_heads", "n_head"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise HeadSiteError(f"{type(adapter.base_model).__name__}'s config has no num_attention_heads/n_head; expected a "
                        "head count")


def _attention_module(block: nn.Module, layer: int) -> nn.Module:
    found = [m for name, m in block.named_children()
             if any(k in name.lower() for k in ATTENTION_NAMES) and any(map(_is_projection, m.modules()))]  # fmt: skip
    if len(found) != 1:
        names = [name for name, _ in block.named_children()]
        raise HeadSiteError(
            f"block {layer} ({type(block).__name__}) has children {names}; expected exactly one named "
            "like 'attn'/'attention' that holds Linear/Conv1D projections"
        )
    return found[0]


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D, MixedLinear))  # MixedLinear: a Linear under --dtype mixed


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def _find_sites(adapter: ArchitectureAdapter) -> list[HeadSite]:
    n_heads = num_heads_config(adapter)
    blocks = list(adapter.layers)
    attentions = [_attention_module(block, i) for i, block in enumerate(blocks)]
    last_called: dict[int, nn.Module] = {}
    proj_out: dict[int, torch.Tensor] = {}
    norm_inputs: dict[int, list[tuple[nn.Module, torch.Tensor]]] = {i: [] for i in range(len(blocks))}
    handles = []

    def on_projection(layer: int, module: nn.Module):
        def hook(mod, args, output):
            last_called[layer] = module
            proj_out[layer] = output.detach()

        return hook

    def on_norm(layer: int, module: nn.Module):
        def hook(mod, args):
            if args:
                norm_inputs[layer].append((module, args[0].detach()))

        return hook

    for i, (block, attention) in enumerate(zip(blocks, attentions)):
        for module in attention.modules():
            if _is_projection(module):
                handles.append(module.register_forward_hook(on_projection(i, module)))
        for module in block.modules():
            if _is_norm(module) and module is not block:
                handles.append(module.register_forward_pre_hook(on_norm(i, module)))
    embeddings = adapter.base_model.get_input_embeddings()
    # a token whose embedding is not zero (a padding row is): a zero residual would make a norm after the residual
    # add (llama's pre-MLP norm) see exactly the attention output and pass for a post-attention norm
    weight = embeddings.weight.detach()
    filler = 1 if weight.device.type == "meta" else int(weight[:1024].float().norm(dim=-1).argmax())  # meta: offloaded
    ids = [*adapter.prefix_ids, filler, filler][-2:]
    device = execution_device(embeddings)
    try:
        with torch.no_grad():
            adapter.base_model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    sites = []
    for i, attention in enumerate(attentions):
        proj = last_called.get(i)
        if proj is None:
            raise HeadSiteError(f"block {i}: no Linear/Conv1D ran inside {type(attention).__name__}; expected an "
                                "output projection")  # fmt: skip
        width = proj.weight.shape[0] if isinstance(proj, Conv1D) else proj.weight.shape[1]
        if width % n_heads:
            raise HeadSiteError(f"block {i}: output projection input width {width} is not a multiple of "
                                f"{n_heads} heads; expected heads * head_dim")  # fmt: skip
        out = proj_out[i]
        post = [m for m, x in norm_inputs[i] if x.shape == out.shape and torch.equal(x, out)]
        sites.append(HeadSite(i, attention, proj, n_heads, width // n_heads, post[0] if post else None))
    return sites


def rms(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Root mean square over the last dimension, with ``eps`` added under the root as RMS norms do."""
    return (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()


def norm_eps(norm: nn.Module) -> float:
    for key in ("eps", "variance_epsilon"):
        value = getattr(norm, key, None)
        if isinstance(value, float):
            return value
    return 0.0


@torch.no_grad()
def frozen_norm(norm: nn.Module, x: torch.Tensor, typical_rms: torch.Tensor | float) -> torch.Tensor:
    """The post-attention norm as a linear map, its scale frozen at ``typical_rms``.

    An RMS norm is ``g * x / rms(x)``; a small addition to the attention output moves the residual by about
    ``g * x / rms(a)``, with ``a`` the layer's typical attention output. Computed with the module itself
    (``N(x) * rms(x) / typical_rms``), so the gain convention (e.g. gemma's ``1 + w``) is the model's own.
    """
    eps = norm_eps(norm)
    x = x.float()
    weight_dtype = next(norm.parameters(), torch.empty(0)).dtype
    out = norm(x.to(weight_dtype)).float()
    return out * rms(x, eps) / typical_rms


@torch.no_grad()
def check_rms_type(norm: nn.Module, hidden: int, layer: int) -> None:
    """Raise unless ``N(x) * rms(x)`` is linear in x (true of RMS norms, not of LayerNorm with centring/bias)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, hidden, generator=gen)
    device = next(norm.parameters(), torch.empty(0)).device
    x, y = x.to(device), y.to(device)
    lhs = frozen_norm(norm, x + y, 1.0)
    rhs = frozen_norm(norm, x, 1.0) + frozen_norm(norm, y, 1.0)
    dtype = next(norm.parameters(), torch.empty(0)).dtype
    tol = max(1e-3, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3  # bf16 rounds the output
    if not torch.allclose(lhs, rhs, rtol=tol, atol=tol * float(rhs.abs().max())):
        raise HeadSiteError(
            f"block {layer}: the norm after attention ({type(norm).__name__}) is not an RMS-type norm; "
            "expected N(x) * rms(x) linear in x to fold it into a function vector"
        )


@torch.no_grad()
def project_heads(
    lm: LoadedModel, values: torch.Tensor, heads: Sequence[tuple[int, int]], attention_rms: torch.Tensor
) -> torch.Tensor:
    """Head outputs ``values`` (S, len(heads), head_dim) in residual-stream space (S, len(heads), H): each
    through its head's block of the output projection, then the post-attention norm frozen at
    ``attention_rms[layer]`` (the layer's typical attention-output rms on clean prompts) where there is one."""
    sites = head_sites(lm)
    columns = []
    for c, (li, j) in enumerate(heads):
        site = sites[li]
        weight = site.head_weight(j).float()  # (head_dim, H)
        term = values[:, c].float().to(weight.device) @ weight
        if site.post_norm is not None:
            check_rms_type(site.post_norm, term.shape[-1], li)
            term = frozen_norm(site.post_norm, term.to(_device(site.post_norm)), attention_rms[li])
        columns.append(term.float().cpu())
    return torch.stack(columns, dim=1)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device
