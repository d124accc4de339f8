"""Numerical reliability of ``taskvec run`` on a real model: determinism, batch size and bfloat16.

    python bench/bench_reliability.py [--model gemma-3-270m] [--tasks to_upper country_capital en_fr antonyms]
                                      [--batch-sizes 32 8 1] [--skip-bf16] [--no-repeat] [--fp32-from DIR]
                                      [--json out.json]

Runs the paper's protocol (``run_main``, default sizes) on a few tasks:

1. float32 twice with batch size 32 (same seed): are the results.json numbers identical?
2. float32 with each batch size of ``--batch-sizes``: are the predictions identical to batch size 32?
3. bfloat16, batch size 32: per-prediction agreement with float32 (every dev-sweep, task-vector, regular
   and baseline prediction), and the per-task accuracy differences.

``--fp32-from DIR`` takes the float32 batch-size-32 run from an earlier ``taskvec run --out DIR`` of the
same tasks instead of running it; ``--no-repeat`` skips the second float32 run. Prints a table; exit
status 1 when float32 runs of the same command differ. Takes about 5 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import taskvec
from taskvec.experiments import MainConfig, run_main

NUMBERS = ("regular", "hypothesis", "baseline")


def load_rows(out: Path) -> dict[tuple, str]:
    rows = {}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        r = json.loads(line)
        layer = r["layer"] if r["method"] == "dev_sweep" else None  # hypothesis: each run's own best layer
        rows[(r["task"], r["split"], r["method"], r["set"], layer)] = r["prediction"]
    return rows


def numbers(results: dict) -> dict:
    """results.json without wall-time fields."""
    tasks = {name: {k: v for k, v in entry.items() if k != "seconds"} for name, entry in results["tasks"].items()}
    return {"tasks": tasks, "summary": results["summary"]}


def agreement(a: dict[tuple, str], b: dict[tuple, str], method: str | None = None) -> tuple[int, int]:
    keys = [k for k in a if method is None or k[2] == method]
    return sum(a[k] == b.get(k) for k in keys), len(keys)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", nargs="+", default=["to_upper", "country_capital", "en_fr", "antonyms"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 8, 1])
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--no-repeat", action="store_true", help="skip the second float32 batch-size-32 run")
    parser.add_argument("--fp32-from", default=None, help="reuse this float32 batch-size-32 run directory")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="taskvec-bench-rel-"))
    report: dict = {"model": args.model, "tasks": args.tasks, "cpu_count": os.cpu_count(), "runs": {}}

    def run(lm, dtype: str, batch_size: int, tag: str) -> tuple[dict, dict]:
        config = MainConfig(model=args.model, tasks=tuple(args.tasks), dtype=dtype, batch_size=batch_size)
        started = time.perf_counter()
        results = run_main(config, tmp / tag, lm=lm)
        seconds = time.perf_counter() - started
        report["runs"][tag] = {"seconds": round(seconds, 1), "mean": results["summary"]["mean"]}
        print(f"  {tag}: {seconds:.0f} s", file=sys.stderr)
        return results, load_rows(tmp / tag)

    lines = ["| comparison | predictions equal | results.json numbers equal |", "|---|---|---|"]
    rerun_identical = True
    need_fp32 = not args.no_repeat or any(bs != 32 for bs in args.batch_sizes) or not args.fp32_from
    lm32 = taskvec.load_model(args.model, dtype="float32") if need_fp32 else None
    if args.fp32_from:
        ref = json.loads((Path(args.fp32_from) / "results.json").read_text())
        ref_rows = load_rows(Path(args.fp32_from))
        assert ref["config"]["dtype"] == "float32" and ref["config"]["tasks"] == args.tasks, "another run"
    else:
        ref, ref_rows = run(lm32, "float32", 32, "fp32-bs32")
    if not args.no_repeat:
        again, again_rows = run(lm32, "float32", 32, "fp32-bs32-again")
        same, total = agreement(ref_rows, again_rows)
        rerun_identical = numbers(ref) == numbers(again)
        lines.append(f"| fp32 bs32, run twice | {same}/{total} | {rerun_identical} |")
    for bs in args.batch_sizes:
        if bs == 32:
            continue
        res, rows = run(lm32, "float32", bs, f"fp32-bs{bs}")
        same, total = agreement(ref_rows, rows)
        lines.append(f"| fp32 bs{bs} vs bs32 | {same}/{total} | {numbers(res) == numbers(ref)} |")
    del lm32
    if not args.skip_bf16:
        lm16 = taskvec.load_model(args.model, dtype="bfloat16")
        res16, rows16 = run(lm16, "bfloat16", 32, "bf16-bs32")
        lines.append("")
        lines.append("| bf16 vs fp32 | agreement | bf16 accuracy - fp32 accuracy (mean over tasks) |")
        lines.append("|---|---|---|")
        for method in ("dev_sweep", "hypothesis", "regular", "baseline", None):
            same, total = agreement(ref_rows, rows16, method)
            key = {"dev_sweep": None, None: None}.get(method, method)
            delta = f"{res16['summary']['mean'][key] - ref['summary']['mean'][key]:+.3f}" if key in NUMBERS else ""
            lines.append(f"| {method or 'all predictions'} | {same}/{total} = {same / total:.3f} | {delta} |")
        lines.append("")
        lines.append("| task | best layer fp32 / bf16 | TV fp32 / bf16 | ICL fp32 / bf16 |")
        lines.append("|---|---|---|---|")
        for name in args.tasks:
            a, b = ref["tasks"][name], res16["tasks"][name]
            lines.append(f"| {name} | {a['best_layer']} / {b['best_layer']} | {a['hypothesis']['accuracy']:.2f} / "
                         f"{b['hypothesis']['accuracy']:.2f} | {a['regular']['accuracy']:.2f} / "
                         f"{b['regular']['accuracy']:.2f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    report["table"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if rerun_identical else 1


if __name__ == "__main__":
    sys.exit(main())
