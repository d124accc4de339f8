"""Model loading and the architecture adapter."""

from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.loading import LoadedModel, load_model
from taskvec.models.registry import BUNDLED_MODELS, DEFAULT_MODEL

__all__ = ["BUNDLED_MODELS", "DEFAULT_MODEL", "ArchitectureAdapter", "LoadedModel", "load_model"]
