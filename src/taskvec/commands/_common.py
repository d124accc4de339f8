"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator

from taskvec.errors import TaskvecError
from taskvec.models.registry import BUNDLED_MODELS, DEFAULT_MODEL

DTYPES = ["float32", "mixed", "bfloat16", "float16"]


def add_model_argument(parser: argparse.ArgumentParser, help_suffix: str = "") -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"bundled name ({', '.join(BUNDLED_MODELS)}), folder, .gguf or hub id{help_suffix}",
    )  # fmt: skip


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES,
        help="float32 (default, exact); mixed: bfloat16 products in the decoder blocks, float32 elsewhere, "
             "close calls rechecked in float32 (about 2x faster on CPUs with bf16 units); "
             "bfloat16/float16: the whole model",
    )  # fmt: skip


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", default=None, metavar="N",
        help="CPU threads for torch: a number, or auto (default: $TASKVEC_THREADS, else auto = the cores not "
             "busy with other processes when the command starts; see the README's 'Threads')",
    )  # fmt: skip


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """The prompt choices beyond the paper's (:class:`taskvec.tasks.protocol.PromptProtocol`)."""
    parser.add_argument(
        "--template", default="paper", choices=("paper", "fv"),
        help="paper: the paper's example:x->y lines, each task's variant chosen by its rule; fv: the "
             "function-vector code's 'Q: x' / 'A: y' blocks separated by blank lines, a space before every input "
             "and answer, for every task",
    )  # fmt: skip
    parser.add_argument(
        "--all-pairs", action="store_true",
        help="keep every pair whose answer tokenizes after its query (as the function-vector code does) and "
             "score the first generated token by prefix, instead of each task's rule (one-token answers for "
             "word and algorithmic tasks)",
    )  # fmt: skip
    parser.add_argument(
        "--bosless-prefix", default="newline", choices=("newline", "none"),
        help="for tokenizers that add no BOS token (Qwen): put a newline before every prompt (default: keeps "
             "the first prompt token from becoming an attention sink) or nothing (as the function-vector code)",
    )  # fmt: skip


def prompt_protocol(args: argparse.Namespace):
    from taskvec.tasks.protocol import PromptProtocol

    return PromptProtocol(args.template, "all" if args.all_pairs else "protocol", args.bosless_prefix)


def add_attribution_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attribution", default="exact", choices=("exact", "gradient"),
        help="with fv: each head's effect by patched forwards (exact: one last-token forward per head and "
             "prompt) or by attribution patching (gradient: one forward and backward per prompt, a linear "
             "estimate; see docs/function-vectors.md for how it compares)",
    )  # fmt: skip


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse ``--name`` values below 1 with a message naming the option and the value."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise TaskvecError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="cpu",
        help="cpu, cuda, cuda:N, mps, or auto: spread the model over all visible GPUs (accelerate device map), "
        "offloading what does not fit to CPU RAM, then disk",
    )  # fmt: skip


def add_batch_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", default=32,
        help="prompts per forward pass, or auto: start high (256 on a GPU, 32 on the CPU) and halve on out-of-memory",
    )  # fmt: skip


@contextlib.contextmanager
def task_progress(desc: str) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(task, done, total)`` callback drawing one bar of tasks (created at the first call, so
    that errors before it print alone), closed on exit."""
    from tqdm import tqdm

    bars: list = []

    def progress(task: str, done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="task", desc=desc, file=sys.stderr))
        bars[0].n = done
        bars[0].set_postfix_str(task)
        bars[0].refresh()

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()
