"""Where a model computes: device names, accelerate device maps and offloaded weights.

A model spread over devices with accelerate (``load_model(device="auto")`` or :func:`dispatch_split`)
carries an ``AlignDevicesHook`` on its modules: the hook moves inputs to the module's *execution device*
and, for offloaded modules (weights on the CPU or on disk), brings the weights in for the forward pass
only. Between passes such a module's parameters sit on the ``meta`` device, so code that needs a real
device or the weights themselves asks here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from taskvec.errors import TaskvecError

if TYPE_CHECKING:
    from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; CUDA must be available when asked for."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise TaskvecError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TaskvecError(f"device {device!r} asked for, but no CUDA GPU is visible; use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise TaskvecError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible")
    if device == "mps" and not torch.backends.mps.is_available():
        raise TaskvecError("device 'mps' asked for, but the Apple MPS backend is not available; use --device cpu")
    return device


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device, else its first parameter's."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is None:
        for inner in getattr(hook, "hooks", ()):  # a SequentialHook
            device = getattr(inner, "execution_device", None) or device
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def weights_offloaded(module: nn.Module) -> bool:
    """Whether ``module``'s weights live off-device (on ``meta`` between forward passes)."""
    return any(p.device.type == "meta" for p in module.parameters())


def interleaved_map(lm: LoadedModel, offload: str = "disk") -> dict[str, str]:
    """A device map that keeps every other decoder block, the embeddings and the unembedding on ``offload``
    (``"disk"``, ``"cpu"`` or a GPU) and the rest on the CPU: a split model for testing and benchmarks."""
    names = {id(module): name for name, module in lm.model.named_modules()}
    prefix = f"{names[id(lm.adapter.base_model)]}." if names[id(lm.adapter.base_model)] else ""
    embedding = lm.model.get_input_embeddings()
    device_map: dict[str, str] = {}
    for name, child in lm.adapter.base_model.named_children():
        if child is lm.adapter.layers:
            device_map.update({f"{prefix}{name}.{i}": offload if i % 2 else "cpu" for i in range(len(child))})
        else:
            device_map[f"{prefix}{name}"] = offload if child is embedding else "cpu"
    for name, child in lm.model.named_children():
        if child is not lm.adapter.base_model:
            device_map[name] = offload
    return device_map


def dispatch_split(
    lm: LoadedModel, device_map: Mapping[str, str | int], offload_dir: str | os.PathLike | None = None
) -> LoadedModel:
    """Spread ``lm``'s model over devices with accelerate, in place: ``device_map`` maps module names to a
    device, ``"cpu"`` or ``"disk"`` (weights kept in ``offload_dir`` and read in for each forward pass).
    Every parameter must be covered. Returns the model with a fresh adapter."""
    from accelerate import dispatch_model

    from taskvec.models.adapter import ArchitectureAdapter

    if "disk" in device_map.values() and offload_dir is None:
        raise TaskvecError("a device map with 'disk' entries needs an offload directory")
    names = [name for name, _ in lm.model.named_parameters()]
    uncovered = [n for n in names if not any(not k or n == k or n.startswith(f"{k}.") for k in device_map)]
    if uncovered:
        raise TaskvecError(f"device map does not place parameter(s) {', '.join(uncovered[:3])}; map every module")
    gpus = [d for d in device_map.values() if d not in ("cpu", "disk")]
    main = torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0]) if gpus else torch.device("cpu")
    logger.info("dispatching %s over %s (main device %s)", lm.model_id, sorted({str(d) for d in device_map.values()}),
                main)  # fmt: skip
    model = dispatch_model(lm.model, dict(device_map), main_device=main, offload_dir=offload_dir)
    adapter = ArchitectureAdapter.from_model(model, lm.tokenizer)
    return replace(lm, model=model, adapter=adapter)
