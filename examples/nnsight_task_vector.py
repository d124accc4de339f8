"""Task-vector extraction and patching through nnsight (local, or on NDIF with --remote).

Not part of taskvec (nnsight is not a dependency): a reference for running the paper's two steps on a
model too large for your machine. Run it in an environment with nnsight (``pip install nnsight``):

    python examples/nnsight_task_vector.py MODEL --layer 9 [--remote] [--out theta.safetensors]

MODEL is a local Hugging Face folder, or with --remote a hub id that NDIF serves (needs an NDIF API key:
``python -c "from nnsight import CONFIG; CONFIG.set_default_api_key('KEY')"``). Prints the ICL, task-vector
and zero-shot answers; --out saves theta at every layer (safetensors, readable by ``taskvec.TaskVector``
once wrapped with metadata) so the rest of the pipeline can run elsewhere.
"""

from __future__ import annotations

import argparse

import nnsight
import torch
from nnsight import TransformersModel

DEMOS = [("x", "X"), ("y", "Y"), ("l", "L"), ("k", "K"), ("w", "W")]
DUMMIES = ["f", "m"]
QUERIES = ["a", "b", "c", "d", "e", "g", "h", "j"]


def icl_prompt(demos: list[tuple[str, str]], query: str) -> str:
    """The paper's format, as ``taskvec.PromptTemplate(answer_prefix=" ")`` builds it."""
    return "\n".join(f"example:{x}-> {y}" for x, y in demos) + f"\nexample:{query}->"


def blocks(model: TransformersModel):
    """The decoder blocks (llama/qwen/gemma: model.model.layers; gpt2/gptj: model.transformer.h)."""
    inner = getattr(model, "model", None) or model.transformer
    return getattr(inner, "layers", None) or inner.h


def last_position(output) -> torch.Tensor:
    return (output[0] if isinstance(output, tuple) else output)[:, -1, :]


def extract(model: TransformersModel, remote: bool) -> torch.Tensor:
    """theta at every layer (L, H): the last prompt token's block outputs, averaged over the dummy queries."""
    layers = blocks(model)
    per_prompt = []
    for dummy in DUMMIES:  # one prompt per trace: no padding to reason about
        with model.trace(icl_prompt(DEMOS, dummy), remote=remote):
            states = nnsight.save([])  # a saved container: plain assignments do not leave the trace
            for block in layers:  # in forward order
                states.append(last_position(block.output))
        per_prompt.append(torch.cat([s.detach().float().cpu() for s in states]))
    return torch.stack(per_prompt).mean(dim=0)


def patched_answer(model: TransformersModel, query: str, theta: torch.Tensor | None, layer: int, remote: bool) -> str:
    """Greedy next token of ``example:{query}->`` with block ``layer``'s output at the last position
    REPLACED by theta (the whole residual stream there), as taskvec does."""
    with model.trace(f"example:{query}->", remote=remote):
        if theta is not None:
            output = blocks(model)[layer].output
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[:, -1, :] = theta.to(hidden.dtype)
        token = model.output.logits[0, -1].argmax().save()
    return model.tokenizer.decode([int(token)]).split("\n")[0].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--remote", action="store_true", help="run on NDIF (needs an API key)")
    parser.add_argument("--out", default=None, help="save theta at every layer to this .safetensors file")
    args = parser.parse_args()
    model = TransformersModel(args.model, task="text-generation", dispatch=not args.remote, dtype=torch.float32)
    theta = extract(model, args.remote)
    print(f"theta: {tuple(theta.shape)} (layers, hidden); norm at layer {args.layer}: {theta[args.layer].norm():.4f}")
    for query in QUERIES:
        with model.trace(icl_prompt(DEMOS, query), remote=args.remote):
            icl = model.output.logits[0, -1].argmax().save()
        tv = patched_answer(model, query, theta[args.layer], args.layer, args.remote)
        zero = patched_answer(model, query, None, args.layer, args.remote)
        print(f"{query}: ICL {model.tokenizer.decode([int(icl)]).strip()!r}  TV {tv!r}  zero-shot {zero!r}")
    if args.out:
        from safetensors.torch import save_file

        save_file({"vectors": theta.contiguous()}, args.out)
        print(f"theta -> {args.out}")


if __name__ == "__main__":
    main()
