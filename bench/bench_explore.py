"""Times of ``taskvec explore`` on the default model (warm cache): from the command to a served page, and
from "run" to results for 5 demonstrations x 10 queries (the to_upper task's prefill), through the HTTP API.

    OMP_NUM_THREADS=1 python bench/bench_explore.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "taskvec.cli", "explore", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200
        print(f"taskvec explore -> served page: {time.monotonic() - started:.1f} s")
        prefill = _get(url + "api/task/to_upper")
        for _ in range(args.repeats):
            t0 = time.monotonic()
            job = _post(url + "api/run", {k: prefill[k] for k in ("task", "demonstrations", "queries")})
            while (status := _get(url + f"api/jobs/{job['id']}"))["state"] not in ("done", "error", "cancelled"):
                time.sleep(0.1)
            assert status["state"] == "done", status
            n = len(status["result"]["answers"])
            print(f"run -> results, 5 demonstrations x {n} queries: {time.monotonic() - t0:.1f} s "
                  f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
