"""Cost of head attribution per task (and, with ``--fv``, a small function-vector probe).

    OMP_NUM_THREADS=1 python bench/bench_heads.py [--model gemma-3-270m] [--tasks to_upper]
        [--n-clean 10] [--n-corrupted 10] [--shots 5] [--fv --n-dev 8 --n-test 10 --layers 5-12]

Per task: mean head outputs on ``--n-clean`` clean ICL prompts (one forward each, batched), then the AIE of
every head on ``--n-corrupted`` shuffled-label prompts: one cached prefix forward per prompt group and
(heads + 1) last-token rows per prompt. Printed: wall and CPU seconds and the engine's counts (forwards,
tokens, last-token rows through the unembedding) per stage, the load average, and the extrapolation
to a 7B model (Llama-2-7B shape: 32 layers x 32 heads, 6.5e9 block parameters, vocabulary 32000):

    rows = n_corrupted x (heads + 1);  FLOPs per row ~ 2 x (block parameters + hidden x vocabulary)
    time_7B ~ time_rows(this model) x (rows_7B / rows) x (FLOPs per row 7B / FLOPs per row here)

(the clean and prefix forwards scale the same way per token; on a GPU the rows are batched, so the
wall time is far below this CPU-bound figure). With ``--fv``: layer, k and scale chosen on dev queries,
then test accuracy of zero-shot, ICL, the function vector, and a random vector of the same norm added the
same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time

import torch

import taskvec
from taskvec.engine.accounting import accounting, stage
from taskvec.engine.batching import collate, encode, length_sorted_chunks
from taskvec.engine.forward import decode_predictions, next_token_logits
from taskvec.heads import (
    apply_function_vector,
    head_attribution,
    head_sites,
    random_like,
    sample_icl_examples,
    select_function_vector,
    shuffled_examples,
)
from taskvec.heads.function_vector import accuracy
from taskvec.runtime import make_executor
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task

logger = logging.getLogger("bench_heads")

SEVEN_B = {"layers": 32, "heads": 32, "block_params": 6.5e9, "hidden": 4096, "vocab": 32000}


def block_params(lm) -> int:
    return sum(p.numel() for p in lm.adapter.layers.parameters())


def flops_per_row(params: float, hidden: int, vocab: int) -> float:
    return 2.0 * (params + hidden * vocab)


def icl_predictions(lm, examples, template) -> list[str]:
    rows = encode(lm, [e.prompt(template) for e in examples])
    ids = torch.empty(len(rows), dtype=torch.long)
    for group in length_sorted_chunks(rows, 16):
        ids[group] = next_token_logits(lm, collate(lm, [rows[i] for i in group])).argmax(-1)
    return decode_predictions(lm, ids)


def run_task(lm, name: str, args) -> None:
    prepared = prepare_task(lm, builtin_task(name))
    pairs = [(p.input, p.output) for p in prepared.pairs]
    random.Random(args.seed).shuffle(pairs)
    test, dev, pool = (
        pairs[: args.n_test],
        pairs[args.n_test : args.n_test + args.n_dev],
        pairs[args.n_test + args.n_dev :],
    )
    template = prepared.template
    executor = make_executor(lm, "fast")
    clean = sample_icl_examples(pool, args.n_clean, args.shots, seed=args.seed)
    corrupted = shuffled_examples(sample_icl_examples(pool, args.n_corrupted, args.shots, seed=args.seed + 1),
                                  seed=args.seed + 2)  # fmt: skip
    with accounting() as acc:
        started, cpu = time.perf_counter(), time.process_time()
        with stage("attribution"):
            att = head_attribution(executor, clean, corrupted, template)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    work = acc.work("attribution")
    sites = head_sites(lm)
    n_heads = len(sites) * sites[0].n_heads
    rows = args.n_corrupted * (n_heads + 1)
    here = flops_per_row(block_params(lm), lm.model.config.get_text_config().hidden_size,
                         lm.adapter.unembedding.weight.shape[0])  # fmt: skip
    big = flops_per_row(SEVEN_B["block_params"], SEVEN_B["hidden"], SEVEN_B["vocab"])
    rows_7b = args.n_corrupted * (SEVEN_B["layers"] * SEVEN_B["heads"] + 1)
    print(f"\n== {name}: {len(pairs)} usable pairs, answer prefix {template.answer_prefix!r}")
    print(f"attribution: {wall:.1f} s wall, {cpu:.1f} s CPU; {work.forwards} forwards, {work.tokens} tokens, "
          f"{work.logit_rows} unembedded rows ({rows} = {args.n_corrupted} corrupted x ({n_heads} heads + 1)); "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"baseline p(gold) {att.baseline_probability:.4f}; top heads "
          + ", ".join(f"L{li}H{j} ({float(att.aie[li, j]):+.4f})" for li, j in att.top_heads(5)))  # fmt: skip
    factor = (rows_7b / rows) * (big / here)
    print(f"7B extrapolation (CPU-bound, this machine): {rows_7b} rows x {big / 1e9:.1f} GFLOP/row vs {rows} x "
          f"{here / 1e9:.2f} here -> ~{factor:.0f}x = ~{cpu * factor / 60:.0f} min of one core's CPU time per task "
          f"(~{rows_7b * big / 1e12:.0f} TFLOP in the last-token rows: seconds on one GPU)")  # fmt: skip
    if not args.fv:
        return
    first, last = (int(v) for v in args.layers.split("-"))
    fv = select_function_vector(executor, att, template, [x for x, _ in dev], [y for _, y in dev],
                                layers=range(first, last + 1))  # fmt: skip
    queries, answers = [x for x, _ in test], [y for _, y in test]
    icl = sample_icl_examples(pool, len(test), args.shots, seed=args.seed + 3)
    icl = [type(e)(e.demonstrations, q, a) for e, (q, a) in zip(icl, test)]
    predictions = {
        "zero-shot": apply_function_vector(executor, fv, queries, scale=0.0),
        "ICL": icl_predictions(lm, icl, template),
        "FV": apply_function_vector(executor, fv, queries),
        "random": apply_function_vector(executor, random_like(fv, seed=args.seed), queries),
    }
    scores = {name: accuracy(p, answers) for name, p in predictions.items()}
    icl_correct = [i for i, (p, a) in enumerate(zip(predictions["ICL"], answers)) if p == a.strip()]
    filtered = {name: sum(p[i] == answers[i].strip() for i in icl_correct) / max(1, len(icl_correct))
                for name, p in predictions.items() if name != "ICL"}  # fmt: skip
    print(
        f"FV chosen on {len(dev)} dev queries: layer {fv.layer}, k {fv.k}, scale {fv.scale:g} "
        f"(dev {fv.selection['best_dev_accuracy']:.2f}); |v| = {float(fv.vector.norm()):.1f}; heads {fv.heads}"
    )
    print(f"test accuracy on {len(test)} queries: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    print(f"on the {len(icl_correct)} ICL-correct ones (Todd et al.'s filter): "
          + ", ".join(f"{k} {v:.2f}" for k, v in filtered.items()))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", default="to_upper")
    parser.add_argument("--n-clean", type=int, default=10)
    parser.add_argument("--n-corrupted", type=int, default=10)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fv", action="store_true", help="also choose and test a function vector")
    parser.add_argument("--n-dev", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--layers", default="5-12", help="layers the FV may be added at (dev sweep), FIRST-LAST")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    lm = taskvec.load_model(args.model)
    print(f"{args.model} loaded in {time.perf_counter() - started:.1f} s; threads {torch.get_num_threads()}")
    for name in args.tasks.split(","):
        run_task(lm, name, args)


if __name__ == "__main__":
    main()
