"""What a fast executor knows about its model's shortcuts: kept by the executor, never on the model.

Two shortcuts give a next token without the model's full float32 logits: the argmax over a vocabulary
shortlist (:mod:`taskvec.engine.vocab_argmax`, from the final hidden state) and, in the cached sweep and the
cached last-token variants (:mod:`taskvec.engine.last_token`), skipping the blocks below an edited layer. Both
are exact for standard decoders; each is checked against the model's own logits the first time it is needed,
and not used for this model if it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskvec.engine.vocab_argmax import ShortlistCache


@dataclass
class Shortcuts:
    """``shortlist`` / ``skip_blocks``: whether each shortcut gives this model's exact predictions (None:
    not checked yet); ``cache``: the bfloat16 copy of the unembedding the shortlist reads."""

    shortlist: bool | None = None
    skip_blocks: bool | None = None
    last_token: bool | None = None  # skipping blocks below an edit with a restored output (engine.last_token)
    cache: ShortlistCache = field(default_factory=ShortlistCache)
