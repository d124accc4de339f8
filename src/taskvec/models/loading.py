"""``load_model``: one entry point for bundled names, local folders, GGUF files and hub ids."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taskvec.errors import ModelNotFoundError, TaskvecError
from taskvec.models import dense_cache
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.devices import check_device, execution_device
from taskvec.models.precision import MIXED, enable_mixed_precision, is_mixed
from taskvec.models.registry import BUNDLED_MODELS, DEFAULT_MODEL, BundledModel

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    MIXED: torch.float32,  # float32 model, decoder-block products in bfloat16 (models/precision.py)
}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the adapter that locates its layers."""

    model: torch.nn.Module
    tokenizer: object
    adapter: ArchitectureAdapter
    model_id: str  # what the user asked for (bundled name, path or hub id)
    source: dict[str, str] = field(default_factory=dict)  # provenance: sha256 of weights, revision...

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def input_device(self) -> torch.device:
        return execution_device(self.model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def precision(self) -> str:
        """``mixed`` (bfloat16 products in the blocks, see :mod:`taskvec.models.precision`) or the dtype."""
        return MIXED if is_mixed(self.model) else str(self.dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise TaskvecError(f"unknown dtype {dtype!r}; expected one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    *,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a decoder-only LM for task-vector work.

    ``spec`` is a bundled name (``gemma-3-270m``, ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``), a
    local model folder, a ``.gguf`` file, or a Hugging Face hub id. ``device`` is ``cpu``, ``cuda``,
    ``cuda:N``, ``mps`` or ``auto`` (an accelerate device map spreading the layers over all visible GPUs,
    offloading what does not fit to CPU RAM and then to disk).
    """
    torch_dtype = resolve_dtype(dtype)
    device = check_device(device)
    folder, source = _local_folder(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device == "auto":  # all visible GPUs, then CPU RAM, then disk (weights moved in per forward pass)
        kwargs["device_map"] = "auto"
        kwargs["offload_folder"] = str(dense_cache.cache_root() / "offload" / Path(str(spec)).name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except OSError as exc:
        known = ", ".join(BUNDLED_MODELS)
        raise ModelNotFoundError(
            f"cannot load model {spec!r}: it is not a bundled name ({known}), not an existing local path, "
            f"and loading it as a Hugging Face hub id failed ({exc.__class__.__name__}: {exc})"
        ) from exc
    if device != "auto":
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    adapter = ArchitectureAdapter.from_model(model, tokenizer)
    if dtype == MIXED and not enable_mixed_precision(adapter.layers):
        logger.warning("dtype mixed: %s has no nn.Linear layers in its blocks; running in float32", spec)
    logger.info("loaded %s: %s, %d layers, dtype %s, device map %s", spec, type(model).__name__, adapter.num_layers,
                torch_dtype, getattr(model, "hf_device_map", device))  # fmt: skip
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter, model_id=spec, source=source)


def check_model_spec(spec: str) -> None:
    """Refuse, before anything is loaded, a model that cannot be loaded here: a bundled model whose
    packages are missing (naming the extra that installs them), a path that does not exist or holds no
    model, a typo of a bundled name. Hub ids pass (whether they exist is known only by asking the hub)."""
    if spec in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[spec]
        if not dense_cache.is_complete(_bundled_entry(bundled)):
            bundled.chunk_paths()  # raises ModelPackageMissingError with the install command
        return
    _existing_path(spec)


def _existing_path(spec: str) -> Path | None:
    """``spec`` as an existing model file or folder, None for a hub id; raises for anything else."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file() and path.suffix != ".gguf":
            raise ModelNotFoundError(f"model path {spec!r} is a file but not a .gguf; expected a folder or .gguf")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {spec!r} has no config.json; expected a Hugging Face model folder")
        return path
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"model path {spec!r} does not exist")
    close = difflib.get_close_matches(spec, list(BUNDLED_MODELS), n=1, cutoff=0.8)
    if close:  # a typo of a bundled name: say so now rather than after the hub's network retries
        raise ModelNotFoundError(
            f"unknown model {spec!r}: did you mean the bundled model {close[0]!r}? "
            f"Bundled models: {', '.join(BUNDLED_MODELS)}; or give a local folder, a .gguf file or a hub id"
        )
    return None


def _local_folder(spec: str) -> tuple[str, dict[str, str]]:
    """Map ``spec`` to something ``from_pretrained`` can open, building a dense copy when needed."""
    if spec in BUNDLED_MODELS:
        return str(ensure_bundled(BUNDLED_MODELS[spec])), {"bundled": spec, "sha256": BUNDLED_MODELS[spec].sha256}
    path = _existing_path(spec)
    if path is None:
        return spec, {"hub_id": spec}
    if path.is_file():
        sha = dense_cache.sha256_of_file(path)
        entry = dense_cache.dense_entry(f"{path.stem}-{sha[:16]}")
        if not dense_cache.is_complete(entry):
            dense_cache.log_stage(1, "first use of %s: building its dense copy (one-time; later loads take seconds)",
                                  path.name)  # fmt: skip
            dense_cache.write_dense_copy(path, entry, {"gguf": str(path), "sha256": sha})
        return str(entry), {"gguf": str(path), "sha256": sha}
    return str(path), {"path": str(path.resolve())}


def _bundled_entry(bundled: BundledModel) -> Path:
    return dense_cache.dense_entry(f"{bundled.name}-{bundled.sha256[:16]}")


def ensure_bundled(bundled: BundledModel) -> Path:
    """The dense copy of a bundled model, assembling and converting it on first use."""
    entry = _bundled_entry(bundled)
    if dense_cache.is_complete(entry):
        return entry
    chunks = bundled.chunk_paths()
    entry.parent.mkdir(parents=True, exist_ok=True)
    gguf = entry.parent / bundled.gguf_name
    dense_cache.log_stage(1, "first use of %s: building its dense copy (one-time, about a minute on 2 cores; "
                          "later loads take seconds); assembling the GGUF from %d chunks, checking its sha256",
                          bundled.name, len(chunks))  # fmt: skip
    dense_cache.concatenate_verified(chunks, gguf, bundled.sha256)
    try:
        dense_cache.write_dense_copy(gguf, entry, {"bundled": bundled.name, "sha256": bundled.sha256})
    finally:
        gguf.unlink(missing_ok=True)
    return entry
