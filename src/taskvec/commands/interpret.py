"""``taskvec interpret``: top tokens of theta projected onto the vocabulary (logit lens)."""

from __future__ import annotations

import argparse

from taskvec.commands._analysis import add_common_arguments, layer_options, progress_bar
from taskvec.commands._common import require_positive

NAME = "interpret"
HELP = "project task vectors onto the vocabulary: top tokens per task and layer"
ORDER = 5


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="*", default=["paper"], help="task names or groups (default: paper)")
    parser.add_argument("--layers", type=_int_list, default=(), help="project at these layers, e.g. 6,9,12 "
                        "(default: each task's layer)")  # fmt: skip
    parser.add_argument("--top-k", type=int, default=10, help="tokens listed per vector (default 10)")
    parser.add_argument("--words-only", action="store_true", help="only alphabetic tokens, de-duplicated")
    parser.add_argument("--n-sets", type=int, default=50, help="sets averaged into the mean theta (default 50)")
    parser.add_argument("--n-single", type=int, default=3, help="single thetas also listed (default 3)")
    add_common_arguments(parser, "taskvec-analyses/interpret")


def run(args: argparse.Namespace) -> None:
    from taskvec.errors import TaskvecError
    from taskvec.experiments.analysis_setup import prepare_out_dir
    from taskvec.experiments.interpret import InterpretConfig, run_interpret
    from taskvec.report.analysis_render import write_interpret
    from taskvec.tasks.registry import resolve_task_names

    require_positive(args, "top_k", "n_sets")
    if args.n_single < 0:
        raise TaskvecError(f"--n-single must be at least 0, got {args.n_single}")
    config = InterpretConfig(model=args.model, tasks=tuple(resolve_task_names(args.tasks)), extra_layers=args.layers,
                             n_sets=args.n_sets, n_single=args.n_single, top_k=args.top_k, words_only=args.words_only,
                             shots=args.shots, n_dummy=args.n_dummy, seed=args.seed, layers=layer_options(args),
                             dtype=args.dtype, batch_size=args.batch_size)  # fmt: skip
    out = prepare_out_dir(args.out)
    with progress_bar("interpret") as step:
        results = run_interpret(config, progress=step)
    paths = write_interpret(out, results)
    for name, t in results["tasks"].items():
        for layer, found in t["by_layer"].items():
            print(f"{name} @ {layer}: " + ", ".join(x["token"].strip() or repr(x["token"]) for x in found["mean"]))
    print(f"-> {paths['html']}")
