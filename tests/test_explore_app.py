"""The explorer's web layer on a tiny model: routes, jobs (progress, cancel, isolation), inline errors
(never a traceback), offline assets and escaping rules, and the ``taskvec explore`` command's own checks."""

from __future__ import annotations

import base64
import re
import socket
import threading
import time

import pytest
from tiny_models import make_tiny_model

pytest.importorskip("starlette", reason="the explorer's web packages are not installed (pip install taskvec[explore])")
from starlette.testclient import TestClient

from taskvec.api.task_vector import TaskVector
from taskvec.cli import main
from taskvec.errors import TaskvecError
from taskvec.explore.app import STATIC, create_app
from taskvec.explore.jobs import MAX_PENDING, BusyError, JobRunner

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = "a -> b\nb -> c\nc -> d\nd -> e\ne -> f"
METHODS_LABELS = {"icv": "In-Context Vector", "meandiff": "mean difference"}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(make_tiny_model("llama"))) as c:
        yield c


def wait(client, job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}").json()
        if status["state"] in ("done", "error", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "taskvec explore" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for path in STATIC.iterdir():  # no CDN, no web fonts, no inline script
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), path.name
        assert "@import" not in text and "innerHTML" not in text and "insertAdjacentHTML" not in text
    assert re.findall(r"<script[^>]*>([^<]*)</script>", page.text) == [""]


def test_info_and_task_prefill(client):
    info = client.get("/api/info").json()
    assert info["model"] == "tiny-llama" and info["num_layers"] == 3
    assert "to_upper" in [t["name"] for t in info["tasks"]]
    prefill = client.get("/api/task/to_upper").json()
    assert prefill["demonstrations"].count("\n") == 4
    assert client.get("/api/task/nope").json() == {"error": "unknown task 'nope'"}


def test_run_download_and_apply(client, tmp_path):
    job = client.post("/api/run", json={"demonstrations": DEMOS, "queries": "f -> g\nx"}).json()
    assert job["state"] in ("queued", "running")
    status = wait(client, job["id"])
    assert status["state"] == "done", status
    result = status["result"]
    assert [a["query"] for a in result["answers"]] == ["f", "x"]
    assert len(result["heatmap"]["predictions"]) == 3
    download = client.get(f"/api/jobs/{job['id']}/task_vector")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(download.content)
    assert TaskVector.load(path).layer == result["best_layer"]
    applied = client.post("/api/apply", json={"file": base64.b64encode(download.content).decode(), "queries": "f"})
    status = wait(client, applied.json()["id"])
    assert status["state"] == "done"
    assert status["result"]["layer"] == result["best_layer"]
    assert status["result"]["answers"][0]["task_vector"] == result["answers"][0]["task_vector"]


def test_method_selector_defaults_to_the_task_vector(client):
    from taskvec.explore.analysis import METHODS

    page = client.get("/").text
    select = re.search(r'<select id="method">(.*?)</select>', page, re.S).group(1)
    options = re.findall(r'<option value="([^"]+)"( selected)?>', select)
    assert [value for value, _ in options] == list(METHODS) == ["tv", "fv", "icv", "meandiff"]
    assert [value for value, selected in options if selected] == ["tv"]
    assert [m["name"] for m in client.get("/api/info").json()["methods"]] == list(METHODS)
    result = wait(client, client.post("/api/run", json={"demonstrations": DEMOS, "queries": "f -> g"}).json()["id"])
    best = result["result"]["best_layer"]  # a request without a method (an older page) gets the task vector
    assert result["result"]["method"] == {"name": "tv", "key": "task_vector", "label": "task vector", "layer": best,
                                          "where": f"layer {best}"}  # fmt: skip
    assert set(result["result"]["answers"][0]["correct"]) == {"icl", "task_vector", "zero_shot"}


@pytest.mark.parametrize(("method", "key"), [("icv", "in_context_vector"), ("meandiff", "mean_difference")])
def test_run_with_an_every_layer_method(client, tmp_path, method, key):
    job = client.post("/api/run", json={"demonstrations": DEMOS, "queries": "f -> g\nx", "method": method}).json()
    status = wait(client, job["id"])
    assert status["state"] == "done", status
    result = status["result"]
    assert result["method"] == {"name": method, "key": key, "label": METHODS_LABELS[method], "layer": None,
                                "where": "every layer"}  # fmt: skip
    assert [a["query"] for a in result["answers"]] == ["f", "x"]
    assert all(isinstance(a[key], str) and "task_vector" not in a for a in result["answers"])
    assert result["answers"][0]["correct"][key] in (True, False) and result["answers"][1]["correct"][key] is None
    assert len(result["heatmap"]["predictions"]) == 3  # the heatmap stays the task vector's
    download = client.get(f"/api/jobs/{job['id']}/task_vector")
    assert download.status_code == 200 and f'filename="{key}.safetensors"' in download.headers["content-disposition"]
    path = tmp_path / f"{key}.safetensors"
    path.write_bytes(download.content)
    loaded = TaskVector.load(path)
    assert loaded.method == key and loaded.layer is None
    applied = client.post("/api/apply", json={"file": base64.b64encode(download.content).decode(), "queries": "f"})
    status = wait(client, applied.json()["id"])
    assert status["state"] == "done", status
    assert status["result"]["method"]["key"] == key and status["result"]["method"]["where"] == "every layer"
    assert status["result"]["answers"][0]["task_vector"] == result["answers"][0][key]


@pytest.mark.parametrize("method", ["xyz", "", 3, ["tv"]])
def test_unknown_method_is_a_400_naming_it(client, method):
    response = client.post("/api/run", json={"demonstrations": DEMOS, "queries": "x", "method": method})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith(f"unknown method {method!r}; expected one of ")
    assert "tv (task vector), fv (function vector), icv (In-Context Vector), meandiff (mean difference)" in error


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/run", {"demonstrations": "a b", "queries": "x"}, "demonstrations line 1: 'a b' has no `->`"),
        ("/api/run", {"demonstrations": "\n".join(["a->b"] * 10_000), "queries": "x"}, "10000 lines"),
        ("/api/run", {"demonstrations": DEMOS, "queries": ""}, "queries: nothing entered"),
        ("/api/run", {"demonstrations": DEMOS}, "queries: expected text, got NoneType"),
        ("/api/run", {"demonstrations": DEMOS, "queries": "x", "task": 3}, "task must be a task name"),
        ("/api/apply", {"queries": "x"}, "choose a task vector file"),
        ("/api/apply", {"queries": "x", "file": "%%%"}, "could not be decoded"),
    ],
)
def test_bad_requests_are_inline_messages(client, path, body, message):
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"] and "Traceback" not in response.text


def test_bad_bodies_and_unknown_jobs(client):
    assert client.post("/api/run", content=b"{not json").json() == {"error": "request body is not valid JSON"}
    assert client.post("/api/run", content=b"[1]").json() == {"error": "request body must be a JSON object"}
    assert "too large" in client.post("/api/run", content=b" " * 1_000_001).json()["error"]
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.post("/api/jobs/nope/cancel").status_code == 404
    assert "no such run" in client.get("/api/jobs/nope/task_vector").json()["error"]


def test_errors_in_a_run_are_one_line_and_the_app_keeps_serving(client):
    status = wait(client, client.post("/api/run", json={"demonstrations": "a -> b", "queries": "c"}).json()["id"])
    assert status["state"] == "error" and "single demonstration" in status["error"]
    garbage = base64.b64encode(b"garbage").decode()
    status = wait(client, client.post("/api/apply", json={"file": garbage, "queries": "c"}).json()["id"])
    assert status["state"] == "error" and "not a taskvec safetensors file" in status["error"]
    assert client.get(f"/api/jobs/{status['id']}/task_vector").status_code == 409
    assert client.get("/api/info").status_code == 200


def test_two_sessions_get_their_own_results(client):
    a = client.post("/api/run", json={"demonstrations": DEMOS, "queries": "f -> g\ng -> h"}).json()
    b = client.post("/api/run", json={"demonstrations": "p -> q\nq -> r\nr -> s", "queries": "s"}).json()
    assert a["id"] != b["id"]
    ra, rb = wait(client, a["id"])["result"], wait(client, b["id"])["result"]
    assert [x["query"] for x in ra["answers"]] == ["f", "g"] and ra["demonstrations"][0] == ["a", "b"]
    assert [x["query"] for x in rb["answers"]] == ["s"] and rb["demonstrations"][0] == ["p", "q"]


# --- the job runner -------------------------------------------------------------------------------


def test_jobs_cancel_between_steps_and_hide_internal_errors():
    runner = JobRunner()
    started = threading.Event()

    def slow(report):
        started.set()
        for i in range(1000):
            report(i / 1000, "working")
            time.sleep(0.01)
        return {}, None

    job = runner.submit("analyse", slow)
    started.wait(5)
    runner.cancel(job.id)
    deadline = time.monotonic() + 5
    while not job.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.state == "cancelled"

    def broken(report):
        raise RuntimeError("boom\n  File 'x.py', line 1")

    job = runner.submit("analyse", broken)
    while not job.finished:
        time.sleep(0.01)
    assert job.state == "error" and "\n" not in job.error and job.error.startswith("internal error (RuntimeError)")
    runner.shutdown()


def test_too_many_waiting_runs_are_refused():
    runner = JobRunner()
    gate = threading.Event()
    for _ in range(MAX_PENDING):
        runner.submit("analyse", lambda report: (gate.wait(5), ({}, None))[1])
    with pytest.raises(BusyError, match="already waiting"):
        runner.submit("analyse", lambda report: ({}, None))
    gate.set()
    runner.shutdown()


# --- the command ----------------------------------------------------------------------------------


def test_explore_refuses_a_bad_or_taken_port(capsys):
    assert main(["explore", "--port", "70000"]) == 2
    assert "--port must be 0..65535" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["explore", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def test_explore_host_defaults_to_loopback():
    from taskvec.explore.server import bind, url_of

    sock = bind("127.0.0.1", 0)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url_of(sock))
    finally:
        sock.close()
    with pytest.raises(TaskvecError, match="not an address of this machine"):
        bind("no-such-host.invalid", 0)
