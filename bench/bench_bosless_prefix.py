"""What to put before the prompts of a tokenizer that adds no BOS token (Qwen): one ``taskvec run``.

    python bench/bench_bosless_prefix.py --variant {newline,none,endoftext} --out DIR
                                         [--model qwen2.5-coder-0.5b] [--tasks paper] [--dtype float32]

- ``newline``: "\\n" before every prompt (taskvec's choice before protocol 2);
- ``none``: nothing (the reference code: the prompt starts at position 0);
- ``endoftext``: the tokenizer's ``<|endoftext|>`` token (its document separator, a BOS stand-in).

The run is the default protocol otherwise; its configuration records the variant (``protocol.bosless_prefix``),
so the directories of the variants are never mixed. Compare them with ``taskvec compare``.
"""

from __future__ import annotations

import argparse
import logging

from taskvec.experiments.main_experiment import MainConfig
from taskvec.experiments.runner import run_main
from taskvec.models.loading import load_model
from taskvec.tasks.protocol import protocol_record
from taskvec.tasks.registry import resolve_task_names

VARIANTS = {"newline": "\n", "none": "", "endoftext": "<|endoftext|>"}


def prefix_ids(tokenizer, variant: str) -> list[int]:
    if variant == "endoftext":
        token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise SystemExit("this tokenizer has no <|endoftext|> token")
        return [int(token_id)]
    return list(tokenizer(VARIANTS[variant], add_special_tokens=False)["input_ids"]) if VARIANTS[variant] else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--tasks", default="paper")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lm = load_model(args.model, dtype=args.dtype)
    if lm.adapter.prefix_ids:  # the tokenizer adds no BOS: the variant decides what goes first
        lm.adapter.prefix_ids = prefix_ids(lm.tokenizer, args.variant)
    else:
        logging.warning("%s adds its own BOS token: the variants are the same run", args.model)
    config = MainConfig(model=args.model, tasks=tuple(resolve_task_names([args.tasks])), dtype=args.dtype,
                        protocol=protocol_record(VARIANTS[args.variant]))  # fmt: skip
    results = run_main(config, args.out, lm=lm)
    mean = results["summary"]["mean"]
    logging.info("%s: BL %.3f TV %.3f ICL %.3f", args.variant, mean["baseline"], mean["hypothesis"], mean["regular"])


if __name__ == "__main__":
    main()
