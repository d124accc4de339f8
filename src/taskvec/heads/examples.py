"""ICL examples for head attribution: clean prompts, shuffled-label prompts, the gold answer's first token."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate

#: Tries at a permutation that leaves no demonstration with its own label before settling for any change.
MAX_DERANGEMENT_TRIES = 100


@dataclass(frozen=True)
class IclExample:
    """Demonstrations, a query and its gold answer."""

    demonstrations: tuple[tuple[str, str], ...]
    query: str
    answer: str

    def prompt(self, template: PromptTemplate) -> str:
        return template.icl_prompt(self.demonstrations, self.query)


def sample_icl_examples(
    pairs: Sequence[tuple[str, str]], n_examples: int, n_shots: int, seed: int = 0
) -> list[IclExample]:
    """``n_examples`` examples, each with ``n_shots`` demonstrations drawn from ``pairs`` (seeded) and a
    query that is not among its own demonstrations."""
    pairs = [tuple(p) for p in pairs]
    if n_examples < 1:
        raise TaskvecError(f"n_examples={n_examples!r}; expected at least 1")
    if n_shots < 2:
        raise TaskvecError(f"n_shots={n_shots!r}; expected at least 2 (shuffled labels need two demonstrations)")
    if len(pairs) < n_shots + 1:
        raise TaskvecError(f"{len(pairs)} pairs cannot give {n_shots} demonstrations plus a query; "
                           f"expected at least {n_shots + 1} pairs")  # fmt: skip
    rng = random.Random(seed)
    examples = []
    for _ in range(n_examples):
        chosen = rng.sample(pairs, n_shots + 1)
        (qx, qy), demos = chosen[0], tuple(chosen[1:])
        examples.append(IclExample(demos, qx, qy))  # type: ignore[arg-type]
    return examples


def shuffle_labels(example: IclExample, rng: random.Random) -> IclExample:
    """The same demonstrations with their outputs permuted among them so that labels actually move.

    A permutation that leaves no demonstration with its own output is sought first; when duplicate outputs
    make that impossible, any permutation that changes the label sequence is accepted.
    """
    outputs = [y for _, y in example.demonstrations]
    if len(set(outputs)) < 2:
        raise TaskvecError(f"demonstration outputs {outputs!r} are all equal; expected at least two different "
                           "outputs to shuffle")  # fmt: skip
    order = list(range(len(outputs)))
    for attempt in range(MAX_DERANGEMENT_TRIES * 2):
        rng.shuffle(order)
        moved = [outputs[i] for i in order]
        if attempt < MAX_DERANGEMENT_TRIES:
            if all(m != o for m, o in zip(moved, outputs)):
                break
        elif moved != outputs:
            break
    else:  # unreachable in practice: with two distinct outputs a swap changes the sequence
        raise TaskvecError(f"could not shuffle the outputs {outputs!r}; expected a permutation that moves a label")
    demos = tuple((x, y) for (x, _), y in zip(example.demonstrations, moved))
    return IclExample(demos, example.query, example.answer)


def shuffled_examples(examples: Sequence[IclExample], seed: int = 0) -> list[IclExample]:
    """:func:`shuffle_labels` of each example with one seeded generator."""
    rng = random.Random(seed)
    return [shuffle_labels(e, rng) for e in examples]


def shuffled(examples: Sequence[IclExample], rng: random.Random) -> list[IclExample]:
    """Each example with its demonstrations' outputs permuted among them (:func:`shuffle_labels`); one whose
    outputs are all equal (nothing to shuffle) is kept as it is."""
    out = []
    for e in examples:
        outputs = {y for _, y in e.demonstrations}
        out.append(shuffle_labels(e, rng) if len(outputs) > 1 else e)
    return out


#: How every command pairs the clean and corrupted prompts of a head attribution (recorded in configurations).
CORRUPTED_RECIPE = "clean shuffled"


def attribution_examples(
    clean: Sequence[IclExample], n_corrupted: int, rng: random.Random
) -> tuple[list[IclExample], list[IclExample]]:
    """The one recipe of ``run``, ``heads`` and ``extract``: the clean examples (their prompts give the mean
    head outputs) and, as corrupted prompts, the first ``n_corrupted`` of the same examples with their
    demonstrations' labels shuffled (:func:`shuffled`), so each corrupted prompt differs from a clean one only
    in its labels. (The function-vector code draws its corrupted prompts afresh; pairing them removes the
    variance of the draw from every head's effect. Fed the same prompt strings, the AIE table is the FV code's.)"""
    if n_corrupted < 1:
        raise TaskvecError(f"n_corrupted={n_corrupted!r}; expected at least one corrupted prompt")
    clean = list(clean)
    return clean, shuffled(clean[:n_corrupted], rng)


def first_answer_tokens(lm: LoadedModel, template: PromptTemplate, examples: Sequence[IclExample]) -> list[int]:
    """The first token of each gold answer as it follows its query prompt (``answer_prefix`` included)."""
    queries = [template.query_prompt(e.query) for e in examples]
    full = [template.demonstration(e.query, e.answer) for e in examples]
    q_ids = lm.tokenizer(queries, add_special_tokens=False)["input_ids"]
    f_ids = lm.tokenizer(full, add_special_tokens=False)["input_ids"]
    tokens = []
    for e, q, f in zip(examples, q_ids, f_ids):
        if len(f) <= len(q) or f[: len(q)] != q:
            raise TaskvecError(f"answer {template.answer_prefix + e.answer!r} (for query {e.query!r}) does not "
                               "tokenize as extra tokens after its query prompt; expected a non-empty answer "
                               "that leaves the query's tokens unchanged")  # fmt: skip
        tokens.append(f[len(q)])
    return tokens
