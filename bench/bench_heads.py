"""Cost of a function vector per task, as ``taskvec run --methods tv,fv`` finds it: head attribution and the dev
grid, in seconds, counted work and achieved GFLOP/s.

    python bench/bench_heads.py [--model gemma-3-270m] [--tasks to_upper,country_capital,present_past]
        [--attribution exact,gradient] [--threads 2] [--json out.json]

Per task, the run's own dev sets (``MainConfig`` defaults: 50 dev sets, seed 41) and the run's function-vector
settings (``FvSettings``: 25 shuffled-label prompts, the coarse-to-fine grid):

- ``attribution`` (each mode asked for): mean head outputs on the clean prompts, then every head's effect;
- ``dev grid``: the (layer, k, scale) search on the dev queries (after the first attribution mode).

Printed per stage: wall seconds, forwards, tokens, last-token rows multiplied by the whole unembedding,
GFLOP and GFLOP/s. GFLOP counts the matrix products of the decoder blocks (2 x block parameters per token per
block run) and of the unembedding (2 x vocabulary x hidden per row), in float32 terms; attention scores are left
out, and so is the backward pass of gradient attribution (its forward work only). Rows whose argmax comes from
the vocabulary shortlist are counted as whole unembeddings although they run mostly in bfloat16: the GFLOP/s of
the dev grid can then exceed the float32 peak. For scale: the machine's float32 and bfloat16 matrix-product
rates (2048^3, median of 7) and the load average, printed first. Then the 7B extrapolation of exact attribution
(Llama-2-7B shape: 32 x 32 heads, 6.5e9 block parameters, vocabulary 32000), from this model's per-row cost.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from bench_run import matmul_peak  # this folder is on sys.path when the script runs

import taskvec
from taskvec.engine.accounting import StageWork, accounting, stage
from taskvec.experiments.main_experiment import MainConfig, main_executor, task_splits
from taskvec.experiments.method_comparison import FvSettings, icl_examples, scorer
from taskvec.heads import head_attribution, select_function_vector
from taskvec.heads.examples import attribution_examples
from taskvec.models.head_sites import head_sites
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task

SEVEN_B = {"layers": 32, "heads": 32, "block_params": 6.5e9, "hidden": 4096, "vocab": 32000}


def gflop(lm, work: StageWork) -> float:
    per_block = sum(p.numel() for p in lm.adapter.layers.parameters()) / lm.num_layers
    hidden = lm.model.config.get_text_config().hidden_size
    vocab = lm.adapter.unembedding.weight.shape[0]
    return (2 * per_block * work.block_tokens + 2 * vocab * hidden * work.logit_rows) / 1e9


def line(name: str, seconds: float, work: StageWork, flops: float) -> str:
    return (f"  {name:<22} {seconds:7.1f} s  {work.forwards:5d} forwards  {work.tokens:7d} tokens  "
            f"{work.logit_rows:6d} rows  {flops:8.0f} GFLOP  {flops / seconds:6.0f} GFLOP/s")  # fmt: skip


def run_task(lm, name: str, modes: list[str]) -> dict:
    config = MainConfig(model=lm.model_id)
    settings = FvSettings()
    prepared = prepare_task(lm, builtin_task(name))
    rng, (dev, _, _) = task_splits(prepared, config)
    executor = main_executor(lm, config)
    clean = icl_examples(dev)
    clean, corrupted = attribution_examples(clean, settings.n_corrupted, rng)
    print(f"\n== {name}: {len(dev)} dev sets, {len(corrupted)} shuffled-label prompts; load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    out: dict = {"task": name}
    attributions = {}
    for mode in modes:
        with accounting() as acc, stage("attribution"):
            started = time.perf_counter()
            attributions[mode] = head_attribution(executor, clean, corrupted, prepared.template, attribution=mode)
            seconds = time.perf_counter() - started
        work = acc.work("attribution")
        flops = gflop(lm, work)
        print(line(f"attribution ({mode})", seconds, work, flops))
        out[f"attribution_{mode}"] = {"seconds": seconds, "gflop": flops, "rows": work.logit_rows}
    with accounting() as acc, stage("grid"):
        started = time.perf_counter()
        fv = select_function_vector(executor, attributions[modes[0]], prepared.template,
                                    [s.query.input for s in dev], [s.query.output for s in dev], ks=settings.ks,
                                    scales=settings.scales, scorer=scorer(prepared, dev),
                                    refine_layers=settings.refine_layers)  # fmt: skip
        seconds = time.perf_counter() - started
    work = acc.work("grid")
    flops = gflop(lm, work)
    print(line("dev grid", seconds, work, flops))
    print(f"  chosen: layer {fv.layer}, k {fv.k}, scale {fv.scale:g} (dev {fv.selection['best_dev_accuracy']:.2f}), "
          f"{len(fv.selection['grid'])} configurations")  # fmt: skip
    configurations = len(fv.selection["grid"])
    out["grid"] = {"seconds": seconds, "gflop": flops, "rows": work.logit_rows, "configurations": configurations}
    if "exact" in attributions:
        sites = head_sites(lm)
        rows = len(corrupted) * (len(sites) * sites[0].n_heads + 1)
        hidden, vocab = lm.model.config.get_text_config().hidden_size, lm.adapter.unembedding.weight.shape[0]
        here = 2 * (sum(p.numel() for p in lm.adapter.layers.parameters()) + hidden * vocab)
        big = 2 * (SEVEN_B["block_params"] + SEVEN_B["hidden"] * SEVEN_B["vocab"])
        rows_7b = len(corrupted) * (SEVEN_B["layers"] * SEVEN_B["heads"] + 1)
        factor = rows_7b * big / (rows * here)
        exact_seconds = out["attribution_exact"]["seconds"]
        print(f"  7B extrapolation of exact attribution: {rows_7b} rows x {big / 1e9:.1f} GFLOP vs {rows} x "
              f"{here / 1e9:.2f} here -> ~{factor:.0f}x, ~{exact_seconds * factor / 60:.0f} min on this CPU "
              f"(~{rows_7b * big / 1e12:.0f} TFLOP: seconds on one GPU)")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", default="to_upper,country_capital,present_past")
    parser.add_argument("--attribution", default="exact,gradient", help="modes to time, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    modes = args.attribution.split(",")
    if any(m not in ("exact", "gradient") for m in modes):
        parser.error(f"--attribution {args.attribution!r}: expected exact and/or gradient, comma-separated")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lm = taskvec.load_model(args.model)
    peaks = {str(d).removeprefix("torch."): matmul_peak(d) / 1e9 for d in (torch.float32, torch.bfloat16)}
    print(f"{args.model} loaded in {time.perf_counter() - started:.1f} s; {args.threads} thread(s); matrix products "
          f"float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s; load average "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    results = [run_task(lm, name, modes) for name in args.tasks.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": args.threads, "peaks_gflops": peaks, "tasks": results}, f,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
