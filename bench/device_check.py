"""GPU check of the CUDA path on a 1B-parameter model (random weights: figures of speed and of equality, not of
accuracy). No hub access is needed: the model is built from a gemma-3-1b-shaped config, the tokenizer is the
test suite's character-level one.

    python bench/device_check.py --device cuda --out DIR [--size 1b|tiny]

Prints and writes DIR/device_check.json:
- the fast and the plain executor on the same task (``taskvec run``'s protocol, tv+fv, float32): identical
  per-example predictions?, and each one's wall time;
- bfloat16 (the whole model) vs float32: the fraction of identical predictions, and the wall time;
- head attribution cost per task (all heads), the figure docs/function-vectors.md extrapolates to 7B.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import BOS_ID, EOS_ID, PAD_ID, make_tokenizer

from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.loading import LoadedModel
from taskvec.runtime import make_executor
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import builtin_task

SIZES = {  # gemma-3-1b's shape (about 1.0B parameters), and a tiny one to try the script on a CPU
    "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
               num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, vocab_size=262144),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, vocab_size=1024),
}  # fmt: skip


def build(size: str, device: str, dtype: torch.dtype) -> LoadedModel:
    shape = SIZES[size]
    layers = shape["num_hidden_layers"]
    config = Gemma3TextConfig(**shape, layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention"
                                                    for i in range(layers)],
                              sliding_window=512, max_position_embeddings=4096, pad_token_id=PAD_ID,
                              bos_token_id=BOS_ID, eos_token_id=EOS_ID, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForCausalLM(config).to(dtype).eval()
    tokenizer = make_tokenizer(True)
    return LoadedModel(model, tokenizer, ArchitectureAdapter.from_model(model, tokenizer), f"random-gemma3-{size}")


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="1b", choices=sorted(SIZES))
    parser.add_argument("--task", default="to_upper")
    parser.add_argument("--n", type=int, default=25, help="dev and test sets")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report: dict = {"device": args.device, "size": args.size, "torch": torch.__version__}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    config = MainConfig(model="random", tasks=(args.task,), n_dev=args.n, n_test=args.n, n_baseline=args.n,
                        methods=("task_vector", "function_vector"),
                        fv={"n_corrupted": args.n, "ks": [1, 2, 5, 10], "scales": [0.5, 1.0, 2.0, 4.0]})  # fmt: skip
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        lm, load_s = timed(lambda dtype=dtype: build(args.size, args.device, dtype))
        report["parameters"] = sum(p.numel() for p in lm.model.parameters())
        prepared = prepare_task(lm, builtin_task(args.task))
        kinds = ("fast", "plain") if dtype == torch.float32 else ("fast",)
        for kind in kinds:
            key = f"{str(dtype).removeprefix('torch.')}-{kind}"
            executor = make_executor(lm, kind, 32)
            evaluate_task(lm, prepared, config, executor=executor)  # warm-up (kernels, checks of the shortcuts)
            (result, task_rows), seconds = timed(
                lambda lm=lm, p=prepared, e=executor: evaluate_task(lm, p, config, executor=e)
            )
            rows[key] = [(r["method"], r["split"], r["prediction"]) for r in task_rows]
            report[key] = {"seconds": round(seconds, 2), "build_seconds": round(load_s, 2),
                           "fv_layer": result["function_vector"]["layer"], "fv_k": result["function_vector"]["k"],
                           "tv_layer": result["best_layer"],
                           "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                           if args.device == "cuda" else None}  # fmt: skip
            logging.info("%s: %s", key, report[key])
        del lm
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    same = sum(a == b for a, b in zip(rows["float32-fast"], rows["float32-plain"]))
    report["fast_equals_plain"] = {"identical": same, "of": len(rows["float32-plain"])}
    agree = sum(a == b for a, b in zip(rows["float32-fast"], rows["bfloat16-fast"]))
    report["bfloat16_vs_float32"] = {"identical": agree, "of": len(rows["float32-fast"])}
    print(json.dumps(report, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
