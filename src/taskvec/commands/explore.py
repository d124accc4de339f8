"""``taskvec explore``: a local web app to see a task vector work, layer by layer."""

from __future__ import annotations

import argparse
import sys

from taskvec.commands._common import add_device_argument, add_dtype_argument, add_model_argument

NAME = "explore"
HELP = "a local web app: type demonstrations and queries, see ICL / task-vector / zero-shot answers and each layer"
ORDER = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860; 0: any free port)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; no login)"
    )
    add_dtype_argument(parser)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    from taskvec.errors import TaskvecError

    if not 0 <= args.port <= 65535:
        raise TaskvecError(f"--port must be 0..65535, got {args.port}")
    try:
        from taskvec.explore.server import bind, is_loopback, serve, url_of
    except ImportError as exc:
        raise TaskvecError(f"taskvec explore needs its web packages ({exc.name} is missing): "
                           "pip install 'taskvec[explore]'") from None  # fmt: skip
    from taskvec.models.loading import load_model

    sock = bind(args.host, args.port)  # a taken port fails now, before the model loads
    print(f"loading {args.model} ...", file=sys.stderr)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    print(f"taskvec explore: serving {lm.model_id} at {url_of(sock)} (Ctrl-C stops it)", flush=True)
    if not is_loopback(sock):
        print("taskvec explore: listening beyond this machine, and the app has no login", file=sys.stderr, flush=True)
    serve(lm, sock)
