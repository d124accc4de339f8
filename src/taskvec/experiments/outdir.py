"""The output directory of a run: its configuration check, per-task partial results and crash leftovers.

Every file is written atomically (``io.atomic``), so a killed run leaves finished files and, at
worst, temporary ``.*.tmp`` files, which the next run (holding the directory's lock) removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from taskvec.errors import OutputDirectoryError
from taskvec.experiments.locking import LOCK_FILE
from taskvec.io.atomic import write_json_atomic

logger = logging.getLogger(__name__)

RUN_CONFIG = "run-config.json"
TASKS_DIR = "tasks"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def task_result_path(out_dir: Path, task_name: str) -> Path:
    """``out_dir/tasks/<file>.json`` for a task: its name when that is a plain file name, otherwise a
    sanitized name plus a hash of the real name, so no task name can reach outside ``out_dir/tasks``."""
    if _SAFE_NAME.fullmatch(task_name) and ".." not in task_name:
        stem = task_name
    else:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", task_name)[:40].strip("_") or "task"
        stem = f"{slug}-{hashlib.sha256(task_name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return out_dir / TASKS_DIR / f"{stem}.json"


#: The temporary files of the atomic writer (``.<name>.<random>.tmp``) and of the writability probe: what a run
#: killed mid-write leaves behind.
TEMP_FILES = ".*.tmp"


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temporary files a killed run left behind (call only while holding the directory's lock)."""
    for folder in (out_dir, out_dir / TASKS_DIR):
        if folder.is_dir():
            for stale in folder.glob(TEMP_FILES):
                logger.info("removing %s, left by an interrupted run", stale)
                stale.unlink(missing_ok=True)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_run_config(out_dir: Path, wanted: dict) -> bool:
    """Whether ``out_dir`` already holds this configuration's run (False: it is empty, a new run).

    Refuses a directory holding another configuration, an unreadable configuration, or foreign files.
    """
    saved_path = out_dir / RUN_CONFIG
    if saved_path.exists():
        saved = _read_json(saved_path)
        if not isinstance(saved, dict):
            raise OutputDirectoryError(
                f"output directory {str(out_dir)!r} has an unreadable {RUN_CONFIG}; use a new --out directory"
            )
        diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if diff:
            details = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in diff)
            raise OutputDirectoryError(
                f"output directory {str(out_dir)!r} holds a run with another configuration ({details}); "
                "use a new --out directory (runs are never mixed)"
            )
        return True
    if any(not _left_by_a_killed_run(p) for p in out_dir.iterdir()):
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not empty and holds no taskvec run")
    return False


def _left_by_a_killed_run(path: Path) -> bool:
    """The lock file, or a temporary file (:data:`TEMP_FILES`; the run that takes the lock removes those): what a run
    killed before writing its configuration may leave in a directory that is otherwise new. The CLI checks
    directories before it takes their locks, so these must not count as foreign files."""
    return path.name == LOCK_FILE or (path.is_file() and path.match(TEMP_FILES))


def write_run_config(out_dir: Path, config: dict) -> None:
    write_json_atomic(out_dir / RUN_CONFIG, config)


def probe_writable(out_dir: Path) -> None:
    try:
        probe = out_dir / ".taskvec-write-test.tmp"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputDirectoryError(f"output directory {str(out_dir)!r} is not writable: {exc.strerror or exc}") from exc


def load_finished_task(path: Path, task_name: str) -> dict | None:
    """A finished task's saved ``{"result", "predictions"}``, or None when it must be (re)computed."""
    if not path.exists():
        return None
    saved = _read_json(path)
    if (
        isinstance(saved, dict)
        and isinstance(saved.get("result"), dict)
        and isinstance(saved.get("predictions"), list)
        and all(isinstance(r, dict) and r.get("task") == task_name for r in saved["predictions"])
    ):
        return saved
    logger.warning("task %s: %s is unreadable or belongs to another task; computing the task again", task_name, path)
    return None


def finished_task_names(out_dir: Path, task_names: list[str]) -> list[str]:
    """The tasks of ``task_names`` whose results a run in ``out_dir`` has already saved (a resume skips them)."""
    return [name for name in task_names if task_result_path(out_dir, name).is_file()]


def open_run_dir(out_dir: Path, wanted: dict) -> bool:
    """Ready a locked output directory for a run of configuration ``wanted``: checked writable, temporary files
    of a killed run removed. Returns whether it already holds this configuration's run (False: a new run;
    another configuration is refused, see :func:`check_run_config`)."""
    probe_writable(out_dir)
    remove_stale_temp_files(out_dir)
    return check_run_config(out_dir, wanted)


def each_task(
    out_dir: Path,
    names: Sequence[str],
    compute: Callable[[int], dict],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict]:
    """``{name: saved}`` for every task, in order: read back from a finished earlier run, or ``compute(i)``
    (``{"result", "predictions"}``) written atomically to ``tasks/<task>.json``. Whatever ``compute`` writes
    beside it (e.g. the task's vectors) is written before the task counts as finished."""
    saved_by_task: dict[str, dict] = {}
    for i, name in enumerate(names):
        if progress:
            progress(name, i, len(names))
        path = task_result_path(out_dir, name)
        saved = load_finished_task(path, name)
        if saved is not None:
            logger.info("task %s: already done, resuming from %s", name, path)
        else:
            saved = compute(i)
            write_json_atomic(path, saved)
        saved_by_task[name] = saved
    if progress:
        progress("", len(names), len(names))
    return saved_by_task
