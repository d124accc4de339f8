"""Options and progress display shared by the analysis commands (robustness, conflict, interpret)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from taskvec.commands._common import add_dtype_argument, add_model_argument, add_threads_argument, require_positive
from taskvec.experiments.analysis_setup import LayerOptions
from taskvec.models.loading import check_model_spec


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """--model, --dtype, layer choice (--layer / --from-run / --n-dev), sampling, --out."""
    add_model_argument(parser)
    add_dtype_argument(parser)
    add_threads_argument(parser)
    layer = parser.add_mutually_exclusive_group()
    layer.add_argument("--layer", type=int, default=None, help="patch/extract at this layer for every task")
    layer.add_argument("--from-run", default=None, help="take each task's best layer from a `taskvec run` directory")
    parser.add_argument(
        "--n-dev", type=int, default=20, help="dev sets of the quick layer sweep (default layer choice)"
    )
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per prompt")
    parser.add_argument("--n-dummy", type=int, default=2, help="dummy queries averaged per task vector")
    parser.add_argument("--seed", type=int, default=41, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass")
    parser.add_argument("--out", default=default_out, help=f"output directory (default: {default_out})")


def layer_options(args: argparse.Namespace) -> LayerOptions:
    """The layer choice, after the checks common to the analyses that need no model (the model too)."""
    require_positive(args, "n_dev", "shots", "n_dummy", "batch_size")
    check_model_spec(args.model)
    return LayerOptions(layer=args.layer, from_run=args.from_run, n_dev=args.n_dev)


@contextmanager
def progress_bar(desc: str) -> Iterator[Callable[[str], None]]:
    """A tqdm bar on stderr counting steps; yields the callback the analyses call at each step."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="step", desc=desc, file=sys.stderr)

    def step(what: str) -> None:
        bar.update(1)
        bar.set_postfix_str(what)

    try:
        yield step
    finally:
        bar.close()
