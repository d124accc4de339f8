"""``taskvec apply``: answer queries with a saved task vector, no demonstrations in the prompt."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taskvec.commands._common import add_dtype_argument, add_threads_argument
from taskvec.errors import TaskvecError

NAME = "apply"
HELP = "answer queries zero-shot with a saved task vector (patched in) or function vector (added); greedy decoding"
ORDER = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_vector", help=".safetensors file written by `taskvec extract` or TaskVector.save")
    parser.add_argument("--model", default=None, help="model to load (default: the one recorded in the file)")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query", nargs="+", action="extend", help="one or more queries (the option may repeat)")
    queries.add_argument("--queries", help="file of queries: one per line (.txt) or a JSON list of strings")
    parser.add_argument("--max-new-tokens", type=int, default=1, help="tokens to decode at most (1..256)")
    parser.add_argument("--layer", type=int, default=None, help="patch at this layer instead of the stored one")
    parser.add_argument("--alpha", type=float, default=1.0, help="scale the stored vector by this factor")
    parser.add_argument(
        "--template", default=None,
        help="how to write the queries: a string with {input} (e.g. 'Q: {input}\\nA:'), or 'chat' (the model's "
             "chat template, the query as the user turn); default: the template stored with the vector",
    )  # fmt: skip
    parser.add_argument(
        "--decoding", default="first", choices=("first", "every_replace", "every_delta"),
        help="with --max-new-tokens > 1: where the vector acts while decoding (first: the paper's single patch, "
             "measured best; every_delta: its shift also added at every generated token)",
    )  # fmt: skip
    parser.add_argument(
        "--stop", default="auto", choices=("auto", "demos", "format", "newline"),
        help="format: an answer ends at a newline or where the template's own text starts; demos: also at "
             "punctuation no demonstration in the file has, and one token after the longest demonstrated answer; "
             "newline: at a newline only (special tokens always end it); auto: demos when the file records "
             "demonstrations, else format",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32, help="queries per forward pass")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    add_dtype_argument(parser)
    add_threads_argument(parser)


def read_queries(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise TaskvecError(f"queries file {path!r} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix.lower() == ".json":
            queries = json.loads(text)
            if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
                raise TaskvecError(f"queries file {path!r}: expected a JSON list of strings")
        else:
            queries = [line.strip() for line in text.splitlines()]
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskvecError(f"queries file {path!r} cannot be read: {exc}") from exc
    queries = [q for q in queries if q.strip()]
    if not queries:
        raise TaskvecError(f"queries file {path!r} holds no queries (blank lines are skipped)")
    return queries


def run(args: argparse.Namespace) -> None:
    from taskvec.api.patching import template_of
    from taskvec.api.task_vector import TaskVector
    from taskvec.engine.generation import check_max_new_tokens
    from taskvec.models.loading import check_model_spec, load_model

    check_max_new_tokens(args.max_new_tokens)
    if args.batch_size < 1:
        raise TaskvecError(f"--batch-size must be at least 1, got {args.batch_size}")
    queries = read_queries(args.queries) if args.queries else list(args.query)
    blank = [q for q in queries if not q.strip()]
    if blank:
        raise TaskvecError(f"query {blank[0]!r} is empty; expected the input of the task")
    tv = TaskVector.load(args.task_vector)
    if args.alpha != 1.0:
        tv = args.alpha * tv
    model = args.model or tv.metadata.get("model_id")
    if not model:
        raise TaskvecError(f"{args.task_vector!r} records no model id (an old file?): pass --model")
    check_model_spec(model)
    print(f"loading {model} ...", file=sys.stderr)
    lm = load_model(model, dtype=args.dtype)
    template = query_template(args.template, lm, template_of(tv))
    stop = file_stop_rule(args.stop, tv, lm, template)
    answers = tv.apply(lm, queries, args.max_new_tokens, layer=args.layer, batch_size=args.batch_size,
                       template=template, mode=args.decoding, stop=stop)  # fmt: skip
    layer = tv.layer if args.layer is None else args.layer
    if args.json:
        print(json.dumps({"task_vector": args.task_vector, "method": tv.method, "operation": tv.operation,
                          "settings": tv.settings,
                          "model": model, "task": tv.metadata.get("task"), "template": template.to_dict(),
                          "decoding": args.decoding, "stop": args.stop,
                          "layer": layer, "alpha": args.alpha, "max_new_tokens": args.max_new_tokens,
                          "results": [{"query": q, "answer": a} for q, a in zip(queries, answers)]},
                         ensure_ascii=False, indent=2))  # fmt: skip
        return
    width = max(len(q) for q in queries) + 2
    for query, answer in zip(queries, answers):
        print(f"{query:<{width}}{answer}")


def query_template(spec: str | None, lm, stored):
    """The template the queries are written in: the stored one, a string with {input}, or the chat template."""
    from dataclasses import replace

    if spec is None:
        return stored
    if spec == "chat":
        chat = getattr(lm.tokenizer, "chat_template", None)
        if not chat:
            raise TaskvecError("--template chat: this model's tokenizer has no chat template; give a string with "
                               "{input} instead")  # fmt: skip
        text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "{input}"}], tokenize=False,
                                                add_generation_prompt=True)  # fmt: skip
        bos = lm.tokenizer.bos_token or ""
        spec = text[len(bos) :] if bos and text.startswith(bos) else text
    if "{input}" not in spec:
        raise TaskvecError(f"--template {spec!r} has no {{input}}; expected e.g. 'Q: {{input}}\\nA:' or 'chat'")
    return replace(stored, query=spec.replace("\\n", "\n"))  # a typed backslash-n is a newline


def file_stop_rule(name: str, tv, lm, template):
    """The stop rule ``name``; ``demos`` reads the demonstrated answers recorded in the vector file (the
    default: ``demos`` when the file has them, else ``format``)."""
    from taskvec.api.patching import default_stop_rule, demonstrated_answers
    from taskvec.core.answering import stop_rule

    if name == "demos":
        answers = demonstrated_answers(tv)
        if not answers:
            raise TaskvecError("--stop demos: this vector file records no demonstrations; use --stop format")
        return stop_rule("demos", template, answers, lm.tokenizer)
    if name == "auto":
        return default_stop_rule(lm, tv, template)
    return stop_rule(name, template)
