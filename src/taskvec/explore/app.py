"""The explorer's web layer: a small Starlette app over :mod:`taskvec.explore.analysis` and its jobs.

The page (``static/``) is plain HTML, CSS and JavaScript served from the installed package: no CDN, no
fonts from elsewhere. It puts user text into the page only through ``textContent``, and the
Content-Security-Policy forbids inline scripts and any other origin. Errors come back as
``{"error": "one line"}``; the server never sends a traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from taskvec.errors import TaskvecError
from taskvec.explore import analysis, compute, inputs
from taskvec.explore.jobs import JobRunner, one_line
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_BODY = 1_000_000  # bytes of one JSON request
MAX_UPLOAD = 16 * 1024 * 1024  # bytes of an uploaded task vector file
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=HEADERS)


async def _json_body(request: Request, limit: int = MAX_BODY) -> dict:
    chunks, size = [], 0
    async for chunk in request.stream():  # stop reading as soon as the limit is passed
        size += len(chunk)
        if size > limit:
            raise TaskvecError(f"request of more than {limit} bytes is too large; at most {limit} are accepted")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise TaskvecError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise TaskvecError("request body must be a JSON object")
    return data


def create_app(lm: LoadedModel, runner: JobRunner | None = None) -> Starlette:
    """The explorer for an already loaded model (loaded once per process, shared by all sessions)."""
    runner = runner or JobRunner()
    prefills: dict[tuple[str, int], dict] = {}  # immutable task data, the same for every session
    prefill_lock = threading.Lock()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    async def info(request: Request) -> Response:
        return JSONResponse({
            "model": lm.model_id, "num_layers": lm.num_layers, "tasks": analysis.task_catalog(),
            "methods": [{"name": k, "label": v} for k, v in analysis.METHODS.items()],
            "limits": {"demonstrations": inputs.MAX_DEMONSTRATIONS, "queries": inputs.MAX_QUERIES,
                       "line_chars": inputs.MAX_LINE_CHARS},
        }, headers=HEADERS)  # fmt: skip

    def _prefill(name: str, seed: int) -> dict:
        with prefill_lock:
            if (name, seed) not in prefills:
                with runner.model_lock:  # the tokenizer is not safe to share across threads
                    prefills[(name, seed)] = analysis.task_prefill(lm, name, seed)
            return prefills[(name, seed)]

    async def task(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        name = request.path_params["name"]
        if name not in {t["name"] for t in analysis.task_catalog()}:
            return _error(f"unknown task {name!r}", 404)
        return JSONResponse(await run_in_threadpool(_prefill, name, 0), headers=HEADERS)

    async def run(request: Request) -> Response:
        data = await _json_body(request)
        demos, queries, task_name = data.get("demonstrations"), data.get("queries"), data.get("task") or None
        inputs.parse_demonstrations(demos)  # refuse bad text at once, next to its box
        inputs.parse_queries(queries)
        if task_name is not None and not isinstance(task_name, str):
            raise TaskvecError("task must be a task name or empty")
        method = analysis.check_method(data.get("method"))  # an unknown one is a 400 before any work

        def work(report):
            result = analysis.analyse(lm, demos, queries, task_name, report, method=method)
            result.pop("_task_vector")
            return result, result.pop("_vector")  # the chosen method's vector, for the download

        return JSONResponse(runner.submit("analyse", work).status(), headers=HEADERS)

    async def apply(request: Request) -> Response:
        data = await _json_body(request, limit=MAX_UPLOAD * 4 // 3 + MAX_BODY)
        queries, encoded = data.get("queries"), data.get("file")
        inputs.parse_queries(queries)
        if not isinstance(encoded, str) or not encoded:
            raise TaskvecError("choose a task vector file (.safetensors) to apply")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise TaskvecError("the uploaded file could not be decoded") from None
        if len(blob) > MAX_UPLOAD:
            raise TaskvecError(f"file of {len(blob)} bytes is too large for a task vector (at most {MAX_UPLOAD})")
        return JSONResponse(runner.submit("apply", lambda report: (analysis.apply_uploaded(lm, blob, queries), None))
                            .status(), headers=HEADERS)  # fmt: skip

    def _job(request: Request):
        job = runner.get(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, "no such run (it may have expired); run again")
        return job

    async def status(request: Request) -> Response:
        return JSONResponse(_job(request).status(), headers=HEADERS)

    async def cancel(request: Request) -> Response:
        job = runner.cancel(request.path_params["job_id"])
        if job is None:
            raise HTTPException(404, "no such run")
        return JSONResponse(job.status(), headers=HEADERS)

    async def download(request: Request) -> Response:
        job = _job(request)
        if job.state != "done" or not isinstance(job.extra, compute.TaskVector):
            raise HTTPException(409, "this run has no task vector to download")
        name = job.extra.method if job.extra.method in analysis.LABELS else "vector"  # a registry name: safe
        headers = {**HEADERS, "Content-Disposition": f'attachment; filename="{name}.safetensors"'}
        return Response(compute.task_vector_bytes(job.extra), media_type="application/octet-stream", headers=headers)

    async def on_taskvec_error(request: Request, exc: Exception) -> Response:
        return _error(str(exc), 503 if type(exc).__name__ == "BusyError" else 400)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(str(exc.detail), exc.status_code)

    async def on_error(request: Request, exc: Exception) -> Response:
        logger.exception("explore request %s failed", request.url.path)
        return _error(f"internal error ({type(exc).__name__}); details are in the server log", 500)

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/task/{name}", task),
        Route("/api/run", run, methods=["POST"]),
        Route("/api/apply", apply, methods=["POST"]),
        Route("/api/jobs/{job_id}", status),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/task_vector", download),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {TaskvecError: on_taskvec_error, HTTPException: on_http_error, Exception: on_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.runner = runner
    return app
