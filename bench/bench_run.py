"""Benchmark of the main job: the paper's full 18-task run, stage by stage, fast path vs straightforward path.

    python bench/bench_run.py [--model gemma-3-270m] [--modes reference,fast,fast-bf16,mixed] [--tasks paper]
                              [--seed 41] [--json out.json] [--keep DIR]

Each mode is one ``taskvec run`` (``run_main``) in a fresh subprocess on a warm model cache, so its wall
time and peak RSS are its own:

- ``reference``: float32, the plain executor (every prompt run whole, one forward per layer of the sweep);
- ``fast``: float32, the fast executor (demonstration prefixes shared, cached layer sweep, vocabulary shortlist);
- ``fast-bf16``: the default engine with the model in bfloat16;
- ``mixed``: the default engine with ``--dtype mixed`` (bf16 products in the blocks, float32 elsewhere,
  close calls recomputed in float32: stage ``recheck``).

Printed per mode and stage (load, prepare, dev_theta, dev_sweep, test_theta_icl, test_tv, baseline,
write): seconds, forward passes, real tokens, padding share, block-tokens, estimated GFLOP and achieved
GFLOP/s. GFLOP counts the matrix products of the decoder blocks (2 x block parameters per token per
block) and of the unembedding (2 x vocab x hidden per row); attention-score products are left out, so
the figures are slightly low. The peak is measured in this process before and after each mode (the
median rate of a 2048 x 2048 x 2048 matrix product in float32 and in bfloat16); "% peak" is against
the mean of the two, since a virtual machine's speed drifts by 10-30% within minutes.

Then: how many predictions of ``fast`` equal those of ``reference`` (the fast path must not change a
single one in float32: exit status 1 otherwise) and of ``fast-bf16`` equal ``fast``. Background CPU use of
other processes during each mode is reported: timings are only meaningful when it is near 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = {
    "reference": {"dtype": "float32", "executor": "plain"},
    "fast": {"dtype": "float32", "executor": "fast"},
    "fast-bf16": {"dtype": "bfloat16", "executor": "fast"},
    "mixed": {"dtype": "mixed", "executor": "fast"},
}
STAGES = ["load", "prepare", "dev_theta", "dev_sweep", "test_theta_icl", "test_tv", "baseline", "recheck"]


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Median FLOP/s of an n x n x n matrix product."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times)


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have used (user + nice + system), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    return sum(int(x) for x in fields[:3]) / os.sysconf("SC_CLK_TCK")


def child(mode: str, model: str, tasks: list[str], out_dir: str, seed: int) -> None:
    """One run of the main experiment; prints a JSON line with its timing and the model's shape."""
    from transformers.utils import logging as hf_logging

    from taskvec.experiments.main_experiment import MainConfig
    from taskvec.experiments.runner import run_main
    from taskvec.models.loading import load_model
    from taskvec.tasks.registry import resolve_task_names

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    settings = MODES[mode]
    config = MainConfig(model=model, tasks=tuple(resolve_task_names(tasks)), dtype=settings["dtype"], seed=seed)
    load_started = time.perf_counter()
    lm = load_model(model, dtype=settings["dtype"])
    load_seconds = time.perf_counter() - load_started
    results = run_main(config, out_dir, lm=lm, executor=settings["executor"])
    blocks = lm.adapter.layers
    block_params = sum(p.numel() for p in blocks.parameters() if p.dim() >= 2) / len(blocks)
    unembedding = lm.adapter.unembedding.weight
    stages = results["timing"]["stages"]
    stages["load"] = {"seconds": load_seconds}
    print(json.dumps({
        "wall_seconds": time.perf_counter() - started,
        "stages": stages,
        "block_params": block_params,
        "unembedding_params": unembedding.numel(),
        "num_layers": lm.num_layers,
        "summary": results["summary"]["mean"],
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


def run_mode(mode: str, args: argparse.Namespace, out_dir: Path) -> dict:
    busy_before, started = busy_cpu_seconds(), time.perf_counter()
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--out", str(out_dir),
               "--seed", str(args.seed)]  # fmt: skip
    proc = subprocess.Popen(
        [*command, "--tasks", *args.tasks], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"mode {mode} failed:\n{stderr[-3000:]}")
    info = json.loads(stdout.strip().splitlines()[-1])
    own_cpu = usage.ru_utime + usage.ru_stime
    info["process_wall_seconds"] = wall
    info["peak_rss_mb"] = usage.ru_maxrss / 1024
    info["other_cpu_cores"] = max(0.0, (busy_cpu_seconds() - busy_before - own_cpu) / wall)
    return info


def predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def close_call_totals(run_dir: Path) -> dict[str, dict[str, int]]:
    """Close calls rechecked and changed per method, summed over the tasks of a mixed-precision run."""
    totals: dict[str, dict[str, int]] = {}
    for entry in json.loads((run_dir / "results.json").read_text())["tasks"].values():
        for method, counts in entry.get("close_calls", {}).items():
            if isinstance(counts, dict):
                into = totals.setdefault(method, {"rechecked": 0, "changed": 0})
                for key in into:
                    into[key] += counts.get(key, 0)
    return totals


def agreement(a: list[dict], b: list[dict]) -> tuple[int, int]:
    # The test rows of the task vector carry the best layer, which may differ between the runs.
    key = lambda r: (r["task"], r["split"], r["method"], r["set"], r["layer"] if r["split"] == "dev" else None)  # noqa: E731
    left = {key(r): r["prediction"] for r in a}
    right = {key(r): r["prediction"] for r in b}
    if left.keys() != right.keys():
        raise SystemExit("the runs did not produce the same examples")
    return sum(left[k] == right[k] for k in left), len(left)


COLUMNS = [("stage", 16), ("s", 8), ("cpu s", 8), ("fwd", 7), ("tokens", 9), ("pad %", 7), ("blk-tok", 10),
           ("GFLOP", 8), ("GFLOP/s", 9), ("% peak", 8)]  # fmt: skip


def row(*cells) -> str:
    out = []
    for (_, width), cell in zip(COLUMNS, cells):
        text = f"{cell:.1f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width) if width == 16 else text.rjust(width))
    return "".join(out)


def measure_peaks(when: str) -> dict[str, float]:
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matrix-product peak {when} (2048^3, {torch.get_num_threads()} threads): float32 "
          f"{peaks['float32'] / 1e9:.0f} GFLOP/s, bfloat16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    return peaks


def print_mode(mode: str, info: dict, peaks: dict) -> None:
    dtype = MODES[mode]["dtype"]
    peak = peaks["bfloat16" if dtype in ("bfloat16", "mixed") else "float32"]
    wall, rss, others = info["process_wall_seconds"], info["peak_rss_mb"], info["other_cpu_cores"]
    print(
        f"\n== {mode} ({dtype}): process wall {wall:.1f} s, peak RSS {rss:.0f} MB, other processes {others:.2f} cores"
    )
    header = row(*(name for name, _ in COLUMNS))
    print(header + "\n" + "-" * len(header))
    total = {"flop": 0.0, "seconds": 0.0, "cpu": 0.0}
    for name in [*STAGES, *sorted(set(info["stages"]) - set(STAGES))]:
        work = info["stages"].get(name)
        if not work:
            continue
        blocks, logits = work.get("block_tokens", 0), work.get("logit_rows", 0)
        flop = 2 * (blocks * info["block_params"] + logits * info["unembedding_params"])
        seconds, cpu = work["seconds"], work.get("cpu_seconds", 0.0)
        total["flop"] += flop
        total["seconds"] += seconds
        total["cpu"] += cpu
        tokens, padded = work.get("tokens", 0), work.get("padded_tokens", 0)
        pad = 100 * (1 - tokens / padded) if padded else 0.0
        rate = flop / seconds if seconds else 0.0
        print(row(name, seconds, cpu, work.get("forwards", 0), tokens, pad, blocks, flop / 1e9, rate / 1e9,
                  100 * rate / peak))  # fmt: skip
    rate = total["flop"] / total["seconds"]
    print(row("all stages", total["seconds"], total["cpu"], "", "", "", "", total["flop"] / 1e9, rate / 1e9,
              100 * rate / peak))  # fmt: skip
    s = info["summary"]
    print(f"mean of {s['n_tasks']} tasks: baseline {s['baseline']:.3f}  task vector {s['hypothesis']:.3f}  "
          f"regular ICL {s['regular']:.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--modes", default="reference,fast,fast-bf16,mixed")
    parser.add_argument("--tasks", nargs="+", default=["paper"])
    parser.add_argument("--seed", type=int, default=41, help="the run's seed (41: the reference results)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--keep", default=None, help="keep the run directories under this folder")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), default=None,
                        help="only compare the predictions of two existing run directories")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.tasks, args.out, args.seed)
        return 0
    if args.compare:
        same, total = agreement(predictions(Path(args.compare[0])), predictions(Path(args.compare[1])))
        print(f"{same}/{total} predictions identical ({100 * same / total:.2f}%)")
        return 0 if same == total else 1
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; expected some of {list(MODES)}")
    peaks = measure_peaks("before the first mode")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="taskvec-bench-"))
    figures: dict = {"peaks": peaks, "modes": {}}
    for mode in modes:
        out_dir = root / mode
        if out_dir.exists():
            sys.exit(f"{out_dir} exists; give another --keep folder")
        info = run_mode(mode, args, out_dir)
        after = measure_peaks(f"after {mode}")  # a virtual machine's speed drifts: rate against the mean
        mean = {k: (peaks[k] + after[k]) / 2 for k in peaks}
        info["peaks"] = {"before": peaks, "after": after}
        figures["modes"][mode] = info
        print_mode(mode, info, mean)
        peaks = after
    status = 0
    runs = {m: predictions(root / m) for m in modes}
    if "reference" in runs and "fast" in runs:
        same, total = agreement(runs["reference"], runs["fast"])
        figures["fast_vs_reference"] = [same, total]
        print(f"\nfast vs reference (float32): {same}/{total} predictions identical")
        status = 0 if same == total else 1
    if "fast" in runs and "fast-bf16" in runs:
        same, total = agreement(runs["fast"], runs["fast-bf16"])
        figures["bf16_vs_fp32"] = [same, total]
        print(f"fast-bf16 vs fast (float32): {same}/{total} predictions identical ({100 * same / total:.2f}%)")
    if "fast" in runs and "mixed" in runs:
        same, total = agreement(runs["fast"], runs["mixed"])
        figures["mixed_vs_fp32"] = [same, total]
        print(f"mixed vs fast (float32): {same}/{total} predictions identical ({100 * same / total:.2f}%)")
    if "mixed" in runs:
        checked = close_call_totals(root / "mixed")
        figures["mixed_close_calls"] = checked
        print("mixed: close calls recomputed in float32 / changed by it: "
              + ", ".join(f"{k} {v['rechecked']}/{v['changed']}" for k, v in checked.items()))  # fmt: skip
    if "reference" in figures["modes"] and "fast" in figures["modes"]:
        ref, fast = figures["modes"]["reference"], figures["modes"]["fast"]
        print(f"speed-up of the whole run: {ref['process_wall_seconds'] / fast['process_wall_seconds']:.2f}x "
              f"({ref['process_wall_seconds']:.0f} s -> {fast['process_wall_seconds']:.0f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
