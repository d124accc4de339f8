"""Close calls of a mixed-precision run, recomputed in float32.

With ``dtype="mixed"`` (:mod:`taskvec.models.precision`) the decoder blocks multiply in bfloat16, which
moves logits by a few hundredths. A prediction can only differ from the float32 one when its best and
second-best logits are that close, so every prediction whose gap is below a threshold is recomputed with
float32 products, from scratch: a patched prediction gets a float32 theta too (its set's dummy-query
prompts rerun in float32). Predictions with a wide gap keep their mixed-precision answer.

The threshold is empirical: on gemma-3-270m every prediction that mixed precision changed had a gap
below 0.07 logits (bench/bench_run.py measures the agreement of the whole run). The main experiment
rechecks its test predictions (task vector, regular ICL, baseline), not the dev layer sweep. The fast
executor (:mod:`taskvec.runtime.fast`) does the recomputing.
"""

from __future__ import annotations

import torch

from taskvec.engine.vocab_argmax import MARGIN_RESOLUTION
from taskvec.errors import TaskvecError

DEFAULT_RECHECK_MARGIN = 0.1


def check_recheck_margin(value: float) -> float:
    if not 0 <= value <= MARGIN_RESOLUTION:
        raise TaskvecError(
            f"recheck margin {value!r} is out of range: expected 0..{MARGIN_RESOLUTION} logits "
            f"(predictions whose top-two logit gap is below it are recomputed in float32)"
        )
    return float(value)


def close(margins: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which predictions are close calls (a nan margin, no prediction, is not)."""
    return margins < threshold
