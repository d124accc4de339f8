"""``grid.yaml``: models x tasks x seeds x shots, checked, and expanded into jobs.

One job = one (model, seed, shots): a ``taskvec run`` of all the grid's tasks into its own run directory
``OUT/runs/<model>/seed<seed>-shots<shots>/``. The model is loaded once per job (for large models loading
dominates a task), the run directory is the usual resumable one (a killed job loses at most the task it
was on) and it is readable by ``taskvec compare``; models x seeds x shots gives the parallelism.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskvec.errors import TaskvecError
from taskvec.experiments.backoff import parse_batch_size
from taskvec.experiments.main_experiment import MainConfig
from taskvec.models.loading import resolve_dtype

#: Keys of grid.yaml: (type, default). Lists also accept a single value.
LIST_KEYS: dict[str, tuple[type, list]] = {
    "models": (str, []),
    "tasks": (str, ["paper"]),
    "task_files": (str, []),
    "seeds": (int, [41]),
    "shots": (int, [5]),
}
INT_KEYS = {"n_dev": 50, "n_test": 50, "n_baseline": 100, "n_dummy": 2, "timeout_min": 24 * 60}
STR_KEYS = {"dtype": "float32", "device": "cpu"}
#: slurm section -> submitit AutoExecutor parameter.
SLURM_KEYS = {
    "partition": ("slurm_partition", str),
    "account": ("slurm_account", str),
    "qos": ("slurm_qos", str),
    "constraint": ("slurm_constraint", str),
    "gpus_per_node": ("gpus_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "mem_gb": ("mem_gb", int),
    "array_parallelism": ("slurm_array_parallelism", int),
    "setup": ("slurm_setup", list),
}
KNOWN_KEYS = [*LIST_KEYS, *INT_KEYS, *STR_KEYS, "batch_size", "slurm"]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class GridJob:
    """One run of the grid: a configuration and the directory it writes."""

    config: MainConfig
    run_dir: Path
    device: str = "cpu"
    threads: int | None = None  # torch threads in the job process (None: torch's default)

    @property
    def name(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


@dataclass(frozen=True)
class GridSpec:
    """A checked grid.yaml."""

    models: list[str]
    tasks: list[str]
    task_files: list[str]
    seeds: list[int]
    shots: list[int]
    sizes: dict[str, int]
    dtype: str
    device: str
    batch_size: int | str
    timeout_min: int
    slurm: dict[str, Any] = field(default_factory=dict)  # submitit parameters

    def jobs(self, out_dir: str | Path, threads: int | None = None) -> list[GridJob]:
        """The grid's jobs, models outermost, then seeds, then shots."""
        jobs = []
        for model in self.models:
            for seed in self.seeds:
                for shots in self.shots:
                    config = MainConfig(model=model, tasks=tuple(self.tasks), task_files=tuple(self.task_files),
                                        shots=shots, seed=seed, dtype=self.dtype, batch_size=self.batch_size,
                                        **self.sizes)  # fmt: skip
                    run_dir = Path(out_dir) / "runs" / model_dir_name(model) / f"seed{seed}-shots{shots}"
                    jobs.append(GridJob(config, run_dir, self.device, threads))
        return jobs


def require_grid_extra() -> None:
    """pyyaml and submitit come with the ``grid`` extra; say how to install them when missing."""
    import importlib.util

    missing = [m for m in ("yaml", "submitit") if importlib.util.find_spec(m) is None]
    if missing:
        raise TaskvecError(f"taskvec grid needs {' and '.join(missing)}: pip install 'taskvec[grid]'")


def model_dir_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name) or "model"


def load_grid(path: str | Path) -> GridSpec:
    """Read and check a grid file; every problem is a :class:`TaskvecError` naming the key and the value."""
    require_grid_extra()
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TaskvecError(f"cannot read grid file {str(path)!r}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise TaskvecError(f"grid file {str(path)!r} is not valid YAML: {exc}") from exc
    return parse_grid(raw, where=str(path))


def parse_grid(raw: Any, where: str = "grid") -> GridSpec:
    """A checked :class:`GridSpec` from the parsed YAML; errors start with ``where``."""
    try:
        return _parse(raw, where)
    except TaskvecError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        raise TaskvecError(f"{where}: {exc}") from exc


def _parse(raw: Any, where: str) -> GridSpec:
    from taskvec.tasks.registry import resolve_task_names

    if not isinstance(raw, dict):
        raise TaskvecError(f"{where}: expected a mapping of keys ({', '.join(KNOWN_KEYS)}), got {type(raw).__name__}")
    unknown = [k for k in raw if k not in KNOWN_KEYS]
    if unknown:
        raise TaskvecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_KEYS)}")
    lists = {key: _list(raw, key, kind, default, where) for key, (kind, default) in LIST_KEYS.items()}
    if not lists["models"]:
        raise TaskvecError(f"{where}: 'models' is required: a list of model names, folders or .gguf files")
    names = [model_dir_name(m) for m in lists["models"]]
    if len(set(names)) != len(names):
        raise TaskvecError(f"{where}: models {lists['models']} share a directory name; give distinct models")
    for key in ("shots",):
        if any(v < 1 for v in lists[key]):
            raise TaskvecError(f"{where}: '{key}' values must be at least 1, got {lists[key]}")
    default_tasks = "tasks" not in raw and lists["task_files"]  # like `taskvec run --task-file`: files only
    tasks = [] if default_tasks else resolve_task_names(lists["tasks"])
    if not tasks and not lists["task_files"]:
        raise TaskvecError(f"{where}: no tasks: list built-in tasks under 'tasks' or files under 'task_files'")
    ints = {key: _int(raw, key, default, where) for key, default in INT_KEYS.items()}
    strs = {key: _str(raw, key, default, where) for key, default in STR_KEYS.items()}
    resolve_dtype(strs["dtype"])
    if not _DEVICE.match(strs["device"]):
        raise TaskvecError(f"{where}: unknown device {strs['device']!r}; expected auto, cpu, cuda, cuda:N or mps")
    timeout = ints.pop("timeout_min")
    return GridSpec(models=lists["models"], tasks=tasks, task_files=lists["task_files"], seeds=lists["seeds"],
                    shots=lists["shots"], sizes=ints, dtype=strs["dtype"], device=strs["device"],
                    batch_size=parse_batch_size(raw.get("batch_size", 32)), timeout_min=timeout,
                    slurm=_slurm(raw.get("slurm", {}), where))  # fmt: skip


def _list(raw: dict, key: str, kind: type, default: list, where: str) -> list:
    value = raw.get(key, default)
    values = value if isinstance(value, list) else [value]
    bad = [v for v in values if not isinstance(v, kind) or isinstance(v, bool)]
    if value is None or bad:
        raise TaskvecError(f"{where}: '{key}' must be a list of {kind.__name__}, got {value!r}")
    if len(set(values)) != len(values):
        raise TaskvecError(f"{where}: '{key}' lists a value twice: {values}")
    return list(values)


def _int(raw: dict, key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TaskvecError(f"{where}: '{key}' must be a whole number of at least 1, got {value!r}")
    return value


def _str(raw: dict, key: str, default: str, where: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise TaskvecError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


def _slurm(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TaskvecError(f"{where}: 'slurm' must be a mapping of {', '.join(SLURM_KEYS)}, got {raw!r}")
    params = {}
    for key, value in raw.items():
        if key not in SLURM_KEYS:
            raise TaskvecError(f"{where}: unknown slurm key {key!r}; known: {', '.join(SLURM_KEYS)}")
        name, kind = SLURM_KEYS[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TaskvecError(f"{where}: slurm '{key}' must be a {kind.__name__}, got {value!r}")
        params[name] = value
    return params
