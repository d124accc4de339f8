"""The resumable run shared by ``taskvec run``, ``heads`` and ``multitoken``: what each command does around its
per-task work.

1. :func:`run_directory` locks the output directory and opens it: a new run, or the resume of a run of the same
   configuration (another configuration is refused; :mod:`taskvec.experiments.outdir`).
2. The command loads its model, then :meth:`RunDirectory.started` records the configuration (only for a new
   run, and only once the model is loaded, so that a failed load leaves nothing behind).
3. :meth:`RunDirectory.each_task` computes each task or reads it back from the run that was killed.
4. :func:`results_header` begins ``results.json`` the same way for every command (created, seed, configuration,
   model, versions) and :meth:`RunDirectory.finish` writes ``predictions.jsonl``, ``results.json`` and the
   report, each atomically.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from taskvec.experiments.locking import output_dir_lock
from taskvec.experiments.outdir import each_task, open_run_dir, write_run_config
from taskvec.io.atomic import write_json_atomic, write_jsonl_atomic
from taskvec.models.loading import LoadedModel
from taskvec.version import __version__

Progress = Callable[[str, int, int], None]  # (task name, tasks finished, tasks in all)


def versions() -> dict[str, str]:
    return {"taskvec": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def model_info(lm: LoadedModel) -> dict:
    """The model's id, class, type, depth and source (bundled name and sha256, or path)."""
    return {"id": lm.model_id, "class": type(lm.model).__name__,
            "model_type": getattr(lm.model.config, "model_type", None), "num_layers": lm.num_layers,
            "source": lm.source}  # fmt: skip


def peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def results_header(command: str | None, config: dict, lm: LoadedModel, seed: int) -> dict:
    """The first entries of every command's ``results.json`` (``command`` None: the main run's, which has none)."""
    head = {} if command is None else {"command": command}
    return {**head, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": seed,
            "config": config, "model": model_info(lm), "versions": versions()}  # fmt: skip


@dataclass
class RunDirectory:
    """A locked output directory and the configuration it holds (see the module docstring)."""

    out: Path
    config: dict
    resuming: bool

    def started(self) -> None:
        """Record the configuration of a new run (call once the model is loaded)."""
        if not self.resuming:
            write_run_config(self.out, self.config)

    def each_task(self, names: list[str], compute: Callable[[int], dict], progress: Progress | None) -> dict:
        """``{name: {"result", "predictions"}}`` for every task, computed or read back from a killed run."""
        return each_task(self.out, names, compute, progress)

    def finish(self, results: dict, rows: Iterable[dict] | None, report: Callable[[Path, dict], None]) -> None:
        """Write ``predictions.jsonl`` (unless ``rows`` is None), ``results.json`` and the report."""
        if rows is not None:
            write_jsonl_atomic(self.out / "predictions.jsonl", rows)
        write_json_atomic(self.out / "results.json", results)
        report(self.out, results)


@contextlib.contextmanager
def run_directory(out_dir: str | Path, config: dict, *, wait: bool = False) -> Iterator[RunDirectory]:
    """The output directory, locked for the whole run (a second run into it is refused, or with ``wait`` waits)
    and opened for ``config``."""
    with output_dir_lock(out_dir, wait=wait) as out:
        yield RunDirectory(out, config, open_run_dir(out, config))
