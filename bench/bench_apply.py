"""Apply a saved task vector vs regular ICL with the same 5 demonstrations: tokens processed and wall time per
query, at batch 1 and batch 32, and the accuracy of each (the "zero-shot cost" claim, measured).

    python bench/bench_apply.py [--model gemma-3-270m] [--tasks present_gerund,country_capital,en_es]
                                [--n-queries 64] [--repeats 3] [--max-new-tokens 1] [--json out.json]

Per task: ``extract_for_task`` (5 demonstrations, 2 dummy queries, layer chosen on 20 held-out pairs) makes
the vector once (its time is shown apart: a one-time cost); the test queries are pairs outside the
demonstrations, dummies and dev pairs. Both methods go through ``taskvec.engine.generation.generate``
(task vector: the bare query prompt with theta patched at the last position; ICL: the 5 demonstrations
followed by the query), greedy, ``--max-new-tokens`` tokens. Tokens per query: prompt tokens (with BOS)
plus the tokens decoded after the first; "padded" counts the positions of the left-padded batches.
Time: the median over ``--repeats`` passes over all queries after a warm-up pass. Accuracy: the task's
scoring on the decoded answer. The CPU used by other processes meanwhile is shown: on a shared machine
the timings mean little when it is high.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

import taskvec
from taskvec.engine.batching import encode, length_sorted_chunks
from taskvec.engine.generation import generate, generate_ids
from taskvec.experiments.extract import ExtractConfig, extract_for_task
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task
from taskvec.tasks.scoring import is_correct


def busy_jiffies_of_others() -> int:
    """Busy CPU jiffies of the whole machine minus this process (from /proc)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    with open(f"/proc/{os.getpid()}/stat") as fh:
        own = fh.read().rsplit(")", 1)[1].split()
    return busy - int(own[11]) - int(own[12])


def tokens_per_query(lm, prompts: list[str], batch_size: int, generated: list[list[int]]) -> tuple[float, float]:
    rows = encode(lm, prompts)
    extra = sum(max(0, len(g) - 1) for g in generated)
    real = sum(len(r) for r in rows) + extra
    padded = sum(len(group) * max(len(rows[i]) for i in group) for group in length_sorted_chunks(rows, batch_size))
    return real / len(rows), (padded + extra) / len(rows)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, share of a CPU other processes used meanwhile) over ``repeats`` calls after a warm-up."""
    fn()
    times, others = [], []
    for _ in range(repeats):
        jiffies = busy_jiffies_of_others()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        others.append((busy_jiffies_of_others() - jiffies) / os.sysconf("SC_CLK_TCK") / elapsed)
    return statistics.median(times), statistics.median(others)


def bench_task(lm, name: str, args) -> list[dict]:
    task = builtin_task(name)
    start = time.perf_counter()
    tv = extract_for_task(lm, task, ExtractConfig(shots=5, n_sets=1, n_dummy=2, n_dev=20, seed=args.seed))
    extract_seconds = time.perf_counter() - start
    demos = [tuple(d) for d in tv.metadata["demonstrations"]]
    used = {x for x, _ in demos} | set(tv.metadata["dummy_queries"]) | set(tv.metadata["dev_inputs"])
    prepared = prepare_task(lm, task)
    test = [p for p in prepared.pairs if p.input not in used][: args.n_queries]
    if not test:
        raise SystemExit(f"task {name}: no pairs left for test queries after the demonstrations and dev pairs")
    queries = [p.input for p in test]
    template = prepared.template
    prompts = {"task vector": [template.query_prompt(q) for q in queries],
               "regular ICL": [template.icl_prompt(demos, q) for q in queries]}  # fmt: skip
    layer = tv.layer
    vectors = tv.at(layer).expand(len(queries), -1)
    tv_patch = {"patch_layers": [layer] * len(queries), "patch_vectors": vectors}
    rows = []
    for batch in (1, 32):
        for method, method_prompts in prompts.items():
            patch = tv_patch if method == "task vector" else {}

            def run(method_prompts=method_prompts, patch=patch, batch=batch):
                return generate(lm, method_prompts, args.max_new_tokens, batch_size=batch, **patch)

            seconds, others = timed(run, args.repeats)
            answers = run()
            ids = generate_ids(lm, method_prompts, args.max_new_tokens, batch_size=batch, **patch)
            real, padded = tokens_per_query(lm, method_prompts, batch, ids)
            accuracy = sum(is_correct(a, p, task.scoring) for a, p in zip(answers, test)) / len(test)
            rows.append({"task": name, "batch": batch, "method": method, "n": len(test), "layer": layer,
                         "tokens_per_query": real, "padded_tokens_per_query": padded,
                         "ms_per_query": 1000 * seconds / len(test), "accuracy": accuracy,
                         "other_cpu": others, "extract_seconds": extract_seconds})  # fmt: skip
    # The task vector through the saved file gives the same answers as in memory (a sanity check).
    assert tv.apply(lm, queries[:8]) == generate(lm, prompts["task vector"][:8], patch_layers=[layer] * 8,
                                                 patch_vectors=vectors[:8])  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", default="present_gerund,country_capital,en_es")
    parser.add_argument("--n-queries", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lm = taskvec.load_model(args.model)
    rows = []
    for name in args.tasks.split(","):
        print(f"... {name}", file=sys.stderr)
        rows += bench_task(lm, name, args)

    print(f"model {args.model}, torch threads {torch.get_num_threads()}, {args.max_new_tokens} new token(s), "
          f"median of {args.repeats}; 'other CPU' = CPUs busy with other processes meanwhile\n")  # fmt: skip
    header = (f"{'task':<17}{'batch':>6}{'method':>13}{'n':>4}{'tok/query':>10}{'padded':>8}{'ms/query':>10}"
              f"{'speed-up':>9}{'accuracy':>9}{'other CPU':>10}")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    for i in range(0, len(rows), 2):
        icl, tvr = rows[i + 1], rows[i]
        for r in (icl, tvr):
            speed = f"{icl['ms_per_query'] / r['ms_per_query']:.2f}x" if r is tvr else ""
            print(f"{r['task']:<17}{r['batch']:>6}{r['method']:>13}{r['n']:>4}{r['tokens_per_query']:>10.1f}"
                  f"{r['padded_tokens_per_query']:>8.1f}{r['ms_per_query']:>10.1f}{speed:>9}{r['accuracy']:>9.2f}"
                  f"{r['other_cpu']:>10.2f}")  # fmt: skip
    print()
    for name in dict.fromkeys(r["task"] for r in rows):
        first = next(r for r in rows if r["task"] == name)
        kept = [r["accuracy"] for r in rows if r["task"] == name and r["batch"] == 1]
        ratio = f"{kept[0] / kept[1]:.2f}" if kept[1] else "-"
        print(f"{name}: layer {first['layer']}, accuracy kept TV/ICL {ratio}, one-time extraction "
              f"(theta + 18-layer dev sweep on 20 pairs) {first['extract_seconds']:.1f} s")  # fmt: skip
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"model": args.model, "args": vars(args), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
