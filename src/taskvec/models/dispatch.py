"""Spreading a loaded model over devices (accelerate), with a fresh adapter."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace

import torch
from accelerate import dispatch_model

from taskvec.errors import TaskvecError
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)


def dispatch_split(
    lm: LoadedModel, device_map: Mapping[str, str | int], offload_dir: str | os.PathLike | None = None
) -> LoadedModel:
    """Spread ``lm``'s model over devices with accelerate, in place: ``device_map`` maps module names to a
    device, ``"cpu"`` or ``"disk"`` (weights kept in ``offload_dir`` and read in for each forward pass).
    Every parameter must be covered. Returns the model with a fresh adapter."""
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
