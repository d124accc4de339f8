"""Running a grid's jobs through submitit: its local executor (N worker processes) or a SLURM job array.

Every job is :func:`run_job` on one :class:`GridJob`: ``run_main`` into the job's run directory, so a job
killed half-way resumes from its finished tasks when the grid is run again, and a finished job (its
``results.json`` written) is skipped. submitit keeps its job files and logs in ``OUT/submitit/``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from taskvec.errors import OutputDirectoryError, TaskvecError
from taskvec.experiments.outdir import check_run_config, probe_writable
from taskvec.grid.config import GridJob, GridSpec
from taskvec.io.atomic import write_json_atomic
from taskvec.threads import configure_threads

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm")
JOBS_FILE = "grid-jobs.json"
POLL_SECONDS = 0.5
#: (job, what happened: "started", "done" or "failed", detail: the submitit job id when started)
Event = Callable[[GridJob, str, str], None]


@dataclass
class GridOutcome:
    """What a grid run did: jobs finished now, jobs skipped as already finished, jobs that failed."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # job name -> reason and log file
    submitted: list[str] = field(default_factory=list)  # SLURM job ids when not waiting


def run_job(job: GridJob) -> dict:
    """The work of one grid job, in the job's own process."""
    from taskvec.experiments.runner import run_main

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_threads(job.threads)  # None: $TASKVEC_THREADS, else the idle cores of the job's allocation
    results = run_main(job.config, job.run_dir, device=job.device)
    return {"run_dir": str(job.run_dir), "mean": results["summary"]["mean"], "seconds": results["timing"]["seconds"]}


def is_finished(job: GridJob) -> bool:
    """A job is finished once its report is written (the last step of ``run_main``, after results.json)."""
    return all((job.run_dir / name).is_file() for name in ("results.json", "report.md", "report.html"))


def plan(spec: GridSpec, out_dir: str | Path, threads: int | None = None) -> tuple[list[GridJob], list[GridJob]]:
    """All jobs and the unfinished ones. Creates each run directory, refusing one that holds a run of
    another configuration, and writes ``OUT/grid-jobs.json`` (the job list ``grid-summary`` reports on)."""
    out_dir = Path(out_dir)
    jobs = spec.jobs(out_dir, threads=threads)
    for job in jobs:  # refuse a directory holding another configuration before any job starts
        try:
            job.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputDirectoryError(f"cannot create {str(job.run_dir)!r}: {exc.strerror or exc}") from exc
        probe_writable(job.run_dir)
        check_run_config(job.run_dir, job.config.to_dict())
    listing = [{"name": j.name, "run_dir": str(j.run_dir.relative_to(out_dir)), "config": j.config.to_dict()}
               for j in jobs]  # fmt: skip
    write_json_atomic(out_dir / JOBS_FILE, {"jobs": listing})
    return jobs, [j for j in jobs if not is_finished(j)]


def run_grid(
    spec: GridSpec,
    out_dir: str | Path,
    executor: str = "local",
    workers: int = 1,
    on_event: Event | None = None,
    wait: bool = True,
) -> GridOutcome:
    """Run the grid's unfinished jobs; ``workers`` local processes at a time, or one SLURM job array."""
    if executor not in EXECUTORS:
        raise TaskvecError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise TaskvecError(f"workers must be at least 1, got {workers}")
    # torch threads per job: the local cores shared by the workers; on SLURM the cores asked for per task.
    local_threads = max(1, (os.cpu_count() or 1) // workers)
    jobs, todo = plan(spec, out_dir, local_threads if executor == "local" else spec.slurm.get("cpus_per_task"))
    outcome = GridOutcome(skipped=[j.name for j in jobs if j not in todo])
    for name in outcome.skipped:
        logger.info("job %s: already finished, skipped", name)
    if not todo:
        return outcome
    folder = Path(out_dir) / "submitit"
    if executor == "local":
        _run_local(todo, folder, spec.timeout_min, workers, outcome, on_event)
    else:
        _run_slurm(todo, folder, spec, outcome, on_event, wait)
    return outcome


def _run_local(todo: list[GridJob], folder: Path, timeout_min: int, workers: int, outcome: GridOutcome,
               on_event: Event | None) -> None:  # fmt: skip
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=timeout_min)
    pending, running = list(todo), []
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                submitted = executor.submit(run_job, job)
                running.append((job, submitted))
                _emit(on_event, job, "started", submitted.job_id)
            time.sleep(POLL_SECONDS)
            for pair in [p for p in running if p[1].done()]:
                running.remove(pair)
                _collect(*pair, outcome, on_event)
    except KeyboardInterrupt:  # stop the local workers too; their run directories resume on the next run
        for _, submitted in running:
            submitted.cancel(check=False)
        raise


def _run_slurm(todo: list[GridJob], folder: Path, spec: GridSpec, outcome: GridOutcome, on_event: Event | None,
               wait: bool) -> None:  # fmt: skip
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:  # submitit checks for srun
        raise TaskvecError(f"--executor slurm: no SLURM here ({exc}); run `taskvec grid` on a cluster login node "
                           "or use --executor local") from exc  # fmt: skip
    executor.update_parameters(name="taskvec-grid", timeout_min=spec.timeout_min, **spec.slurm)
    submitted = executor.map_array(run_job, todo)  # one SLURM job array
    outcome.submitted = [s.job_id for s in submitted]
    for job, sub in zip(todo, submitted):
        _emit(on_event, job, "started", sub.job_id)
    if wait:
        for job, sub in zip(todo, submitted):
            _collect(job, sub, outcome, on_event)


def _collect(job: GridJob, submitted, outcome: GridOutcome, on_event: Event | None) -> None:
    """Wait for one submitted job and record how it ended."""
    try:
        summary = submitted.result()
    except Exception as exc:  # submitit wraps every failure (exception, kill, timeout) of the job
        reason = f"{_failure_reason(exc)} (log: {submitted.paths.stderr})"
        outcome.failed[job.name] = reason
        logger.warning("job %s failed: %s", job.name, reason)
        _emit(on_event, job, "failed", reason)
        return
    outcome.done.append(job.name)
    _emit(on_event, job, "done", f"TV {summary['mean']['hypothesis']:.2f} ICL {summary['mean']['regular']:.2f}")


def _failure_reason(exc: Exception) -> str:
    """One line: the job's own exception, or that its process ended without a result."""
    from submitit.core.utils import UncompletedJobError

    if isinstance(exc, UncompletedJobError):
        return "the job's process ended without a result (killed, out of memory or timed out)"
    errors = [line.strip() for line in str(exc).splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\b", line)]
    return (errors[-1] if errors else type(exc).__name__)[:300]


def _emit(on_event: Event | None, job: GridJob, what: str, detail: str) -> None:
    if on_event:
        on_event(job, what, detail)
