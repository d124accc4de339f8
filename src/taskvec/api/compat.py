"""Which model a task vector belongs to: the metadata recorded at extraction, and the check before applying."""

from __future__ import annotations

from typing import Protocol

import torch

from taskvec.errors import IncompatibleModelError
from taskvec.models.loading import LoadedModel
from taskvec.version import __version__


class VectorsWithMetadata(Protocol):
    """What applying reads of a task vector (:class:`taskvec.api.task_vector.TaskVector`): its (layers,
    hidden) tensor, the recorded metadata and the chosen layer."""

    vectors: torch.Tensor
    metadata: dict
    layer: int | None

    def at(self, layer: int | None = None) -> torch.Tensor: ...


def hidden_size(lm: LoadedModel) -> int:
    return lm.model.get_input_embeddings().weight.shape[-1]


def architecture(lm: LoadedModel) -> str:
    config = lm.model.config
    return str(getattr(config, "model_type", None) or type(lm.model).__name__)


def model_metadata(lm: LoadedModel) -> dict:
    """What a task vector file records about the model it was extracted from."""
    return {
        "model_id": lm.model_id,
        "model_source": dict(lm.source),
        "model_class": type(lm.model).__name__,
        "architecture": architecture(lm),
        "prefix_ids": list(lm.adapter.prefix_ids),
        "model_dtype": lm.precision,
        "taskvec_version": __version__,
    }


def _weights_identity(model_id: str | None, source: dict | None) -> str | None:
    """The strongest identity of a model's weights we know: sha256, then hub id, then path, else the id."""
    source = source or {}
    for key in ("sha256", "revision", "hub_id", "path"):
        if source.get(key):
            return f"{key} {source[key]}"
    return f"id {model_id}" if model_id else None


def check_compatible(lm: LoadedModel, task_vector: VectorsWithMetadata) -> None:
    """Refuse a task vector extracted from another model, naming both.

    Always checked: layer count and hidden size. When the vector records them (format 2): architecture,
    and the weights' identity (sha256 of the weights file, else hub id, else path, else model id).
    """
    meta = task_vector.metadata
    theirs = meta.get("model_id", "an unknown model")
    layers, width = task_vector.vectors.shape
    model_hidden = hidden_size(lm)
    if layers != lm.num_layers or width != model_hidden:
        raise IncompatibleModelError(
            f"task vector of shape ({layers} layers, hidden size {width}) does not fit this model ({lm.num_layers} "
            f"layers, hidden size {model_hidden}): it was extracted from {theirs!r}, this model is {lm.model_id!r}"
        )
    if "architecture" in meta and meta["architecture"] != architecture(lm):
        raise IncompatibleModelError(
            f"task vector was extracted from {theirs!r} (architecture {meta['architecture']}); model "
            f"{lm.model_id!r} is a {architecture(lm)}: load the model the vector came from"
        )
    if "model_source" in meta or "model_id" in meta:
        recorded = _weights_identity(meta.get("model_id"), meta.get("model_source"))
        current = _weights_identity(lm.model_id, lm.source)
        if recorded and current and recorded.split()[0] == current.split()[0] and recorded != current:
            raise IncompatibleModelError(
                f"task vector was extracted from {theirs!r} ({recorded}) but the model is {lm.model_id!r} "
                f"({current}): load the model the vector came from"
            )
