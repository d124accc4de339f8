"""Where a model computes: device names, accelerate device maps and offloaded weights.

A model spread over devices with accelerate (``load_model(device="auto")`` or
:func:`taskvec.models.dispatch.dispatch_split`) carries an ``AlignDevicesHook`` on its modules: the hook
moves inputs to the module's *execution device* and, for offloaded modules (weights on the CPU or on
disk), brings the weights in for the forward pass only. Between passes such a module's parameters sit on
the ``meta`` device, so code that needs a real device or the weights themselves asks here.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from taskvec.errors import TaskvecError

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
