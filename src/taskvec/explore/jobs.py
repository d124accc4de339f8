"""Background jobs of the explorer: one per click, with progress, cancellation and its own result.

Each job has an unguessable id that only the page that started it knows; results live in the job, so
two browser sessions never see each other's work. The model is shared, and patching works by hooks on
its layers, so jobs use it one at a time (``model_lock``); a job waiting for it says so.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from taskvec.errors import TaskvecError
from taskvec.explore.analysis import Cancelled

logger = logging.getLogger(__name__)

MAX_JOBS = 64  # kept in memory; the oldest finished ones are dropped first
MAX_PENDING = 8  # queued or running at once


class BusyError(TaskvecError):
    """Too many runs are waiting; the page says so and the user retries."""


@dataclass
class Job:
    id: str
    kind: str
    state: str = "queued"  # queued, running, done, error, cancelled
    fraction: float = 0.0
    message: str = "waiting for the model (another run is using it)"
    result: dict | None = None
    error: str | None = None
    extra: object = None  # what the result refers to but JSON cannot hold (the task vector)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "error", "cancelled")

    def status(self) -> dict:
        out = {"id": self.id, "kind": self.kind, "state": self.state, "fraction": round(self.fraction, 3),
               "message": self.message}  # fmt: skip
        if self.state == "done":
            out["result"] = self.result
        if self.error:
            out["error"] = self.error
        return out


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class JobRunner:
    """Runs work functions ``fn(report) -> (result dict, extra)`` in background threads, one at a time on
    the model."""

    def __init__(self, workers: int = 2) -> None:
        self.model_lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taskvec-explore")

    def submit(self, kind: str, work: Callable[[Callable[[float, str], None]], tuple[dict, object]]) -> Job:
        with self._lock:
            pending = sum(not j.finished for j in self._jobs.values())
            if pending >= MAX_PENDING:
                raise BusyError(f"{pending} runs are already waiting; try again when one has finished")
            job = Job(id=secrets.token_urlsafe(16), kind=kind)
            self._jobs[job.id] = job
            self._evict()
        self._pool.submit(self._run, job, work)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and not job.finished:
            job.cancel_requested.set()
            job.message = "cancelling..."
        return job

    def shutdown(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.cancel_requested.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _evict(self) -> None:
        while len(self._jobs) > MAX_JOBS:
            oldest = next((k for k, j in self._jobs.items() if j.finished), None)
            if oldest is None:
                return
            del self._jobs[oldest]

    def _run(self, job: Job, work) -> None:
        def report(fraction: float, message: str) -> None:
            if job.cancel_requested.is_set():
                raise Cancelled
            job.fraction, job.message = fraction, message

        try:
            with self.model_lock:
                if job.cancel_requested.is_set():
                    raise Cancelled
                job.state, job.message = "running", "starting"
                result, extra = work(report)
            job.result, job.extra, job.fraction = result, extra, 1.0
            job.state, job.message = "done", "done"
        except Cancelled:
            job.state, job.message = "cancelled", "cancelled"
        except TaskvecError as exc:
            job.error, job.state, job.message = one_line(str(exc)), "error", "stopped"
        except Exception as exc:  # a bug or the machine: logged in full here, one line on the page
            logger.exception("explore job %s failed", job.id)
            job.error = one_line(f"internal error ({type(exc).__name__}): {exc}; details are in the server log")
            job.state, job.message = "error", "stopped"
