"""``taskvec explore`` end to end in a real browser: headless Chromium (Debian's ``chromium`` package) driven
by Playwright's Python API, against the real command serving the real default model (gemma-3-270m).

Skipped, with the reason, where Playwright or Chromium cannot be installed. The first test also takes the
README's screenshot (``docs/explore.png``).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("TASKVEC_CHROMIUM", "/usr/bin/chromium")
# without the background-networking flags Chromium keeps calling home, which a closed network punishes
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "explore.png"
RUN_TIMEOUT_MS = 600_000  # a run of 5 demonstrations x 10 queries takes 10-40 s on a loaded 2-core CPU
# The upper-case set the default-model tests use (tests/test_integration_default_model.py): one of the good ones.
DEMOS = "x -> X\ny -> Y\nl -> L\nk -> K\nw -> W"
QUERIES = "\n".join(f"{c} -> {c.upper()}" for c in "abcdefghij")


def _skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install playwright); no browser to drive"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set TASKVEC_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``taskvec explore --port 0`` in a subprocess; yields its URL and the seconds until a page was served."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    log = tmp_path_factory.mktemp("explore") / "server.log"
    started = time.monotonic()
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "taskvec.cli", "explore", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        url = None
        while url is None:
            try:
                line = lines.get(timeout=300)
            except queue.Empty:
                pytest.fail(f"taskvec explore printed no URL in 300 s; its log: {log.read_text()[-2000:]}")
            if "serving" in line:
                url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200
        yield url, time.monotonic() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _open(browser, url):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's CSP forbids; it also
    # means the escaping checks below hold without the CSP's help
    page = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True).new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('model-info').textContent.includes('gemma-3-270m')")
    return page


def _run(page, demos, queries):
    page.fill("#demonstrations", demos)
    page.fill("#queries", queries)
    page.click("#run")


def _wait_results(page):
    page.wait_for_selector("#results:not([hidden])", timeout=RUN_TIMEOUT_MS)
    page.wait_for_selector("#run:not([disabled])", timeout=RUN_TIMEOUT_MS)


def _column(page, table, index):
    return page.eval_on_selector_all(f"#{table} tbody tr td:nth-child({index})",
                                     "cells => cells.map(c => [c.textContent, c.className])")  # fmt: skip


def test_explore_in_a_browser(server, browser, tmp_path):
    url, served_after = server
    page = _open(browser, url)
    started = time.monotonic()
    _run(page, DEMOS, QUERIES)
    page.wait_for_selector("#progress:not([hidden])")
    _wait_results(page)
    seconds = time.monotonic() - started
    print(f"\nexplore: page served {served_after:.1f} s after start; 5 x 10 run to results {seconds:.1f} s")

    icl, tv, zero = (_column(page, "answers", i) for i in (3, 4, 5))
    assert len(icl) == 10
    assert sum(cls == "ok" for _, cls in icl) >= 9  # ICL gets upper case right
    assert sum(cls == "ok" for _, cls in tv) >= 5  # and so does theta alone, at the best layer
    assert sum(cls == "ok" for _, cls in zero) <= 2  # which the bare query does not
    assert [text for text, _ in icl][:3] == ["A", "B", "C"]

    rows = page.query_selector_all("#heatmap tr[data-layer]")
    assert len(rows) == 18
    assert all(len(r.query_selector_all("td.cell")) == 10 for r in rows)
    best = page.query_selector_all("#heatmap tr.best")
    assert len(best) == 1 and best[0].query_selector("th").text_content().startswith("\u2605")
    best_layer = int(best[0].get_attribute("data-layer"))
    assert page.text_content("#tv-header") == f"task vector @ layer {best_layer}"
    probs = [float(p) for p in page.eval_on_selector_all("#heatmap td.cell", "cs => cs.map(c => c.dataset.prob)")]
    assert len(probs) == 180 and all(0.0 <= p <= 1.0 for p in probs)
    accuracy = [float(r.query_selector("td:last-child").text_content()) for r in rows]
    assert accuracy[best_layer] == max(accuracy) >= 0.5
    assert len(page.query_selector_all("#projection tr")) == 18

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    with page.expect_download() as download:  # the task vector file, applied again through the upload
        page.click("#download")
    saved = tmp_path / "tv.safetensors"
    download.value.save_as(saved)
    page.set_input_files("#tv-file", str(saved))
    page.fill("#apply-queries", "m -> M\nn -> N")
    page.click("#apply")
    page.wait_for_selector("#apply-answers:not([hidden])", timeout=RUN_TIMEOUT_MS)
    assert page.text_content("#apply-tv-header") == f"task vector @ layer {best_layer}"
    assert len(_column(page, "apply-answers", 3)) == 2

    _run(page, "x -> X\nno arrow", "a")  # bad input: an inline message, and the page keeps working
    page.wait_for_selector("#messages .error")
    assert "demonstrations line 2: 'no arrow' has no `->`" in page.text_content("#messages")
    page.set_input_files("#tv-file", {"name": "bad.safetensors", "mimeType": "application/octet-stream",
                                      "buffer": b"not a task vector"})  # fmt: skip
    page.click("#apply")
    page.wait_for_selector("#apply-messages .error", timeout=RUN_TIMEOUT_MS)
    assert "not a taskvec safetensors file" in page.text_content("#apply-messages")
    assert "Traceback" not in page.content()


def test_two_pages_at_once(server, browser):
    url, _ = server
    first, second = _open(browser, url), _open(browser, url)
    hostile = "<img src=x onerror=window.pwned=1>"
    _run(first, DEMOS, "a -> A\nb -> B\nc -> C")
    _run(second, "go -> went\nsee -> saw\ntake -> took", f"eat\n{hostile}")
    _wait_results(first)
    _wait_results(second)
    assert [t for t, _ in _column(first, "answers", 1)] == ["a", "b", "c"]
    assert [t for t, _ in _column(second, "answers", 1)] == ["eat", hostile]  # shown as text, not markup
    assert second.evaluate("window.pwned") is None and second.query_selector("#answers img") is None
    headers = second.eval_on_selector_all("#heatmap tr:first-child th", "hs => hs.map(h => h.textContent)")
    assert headers[1:3] == ["eat", hostile]

    _run(first, DEMOS, QUERIES)  # cancel a run: the page says so and can run again
    first.wait_for_selector("#cancel:not([disabled])")
    first.click("#cancel")
    first.wait_for_function("document.getElementById('status').textContent === 'cancelled'", timeout=RUN_TIMEOUT_MS)
    assert first.is_enabled("#run")


def test_another_method_fills_the_answers_column(server, browser):
    """Picking the In-Context Vector on the page: its answers fill the column, labelled with the method, and the
    heatmap stays the task vector's."""
    url, _ = server
    page = _open(browser, url)
    page.select_option("#method", "icv")
    _run(page, DEMOS, "a -> A\nb -> B\nc -> C")
    _wait_results(page)
    assert page.text_content("#tv-header").startswith("In-Context Vector")
    assert len(_column(page, "answers", 4)) == 3
    assert len(page.query_selector_all("#heatmap tr[data-layer]")) == 18
