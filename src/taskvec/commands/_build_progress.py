"""One progress bar over the one-time build of a model's dense copy, fed by the library's log records.

The library only logs (``taskvec.models.dense_cache.log_stage``); this handler turns the records that
carry a build stage into a bar on stderr whose clock keeps running during long steps (the tokenizer
conversion and the de-quantization take tens of seconds each and report nothing in between).
"""

from __future__ import annotations

import logging
import sys
import threading

from tqdm import tqdm

from taskvec.models.dense_cache import STAGE


class BuildProgress(logging.Handler):
    """Shows records with a build stage as one bar; ignores every other record."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._bar: tqdm | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, STAGE, None)
        if stage is None:
            return
        step, steps = stage
        if self._bar is None:
            tqdm.write(record.getMessage(), file=sys.stderr)
            self._bar = tqdm(total=steps, unit="step", file=sys.stderr,
                             bar_format="first use: step {n_fmt}/{total_fmt} [{elapsed}] {desc}")  # fmt: skip
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        self._bar.n = min(step, steps)  # the step under way
        self._bar.set_description_str(record.getMessage()[:90] if step > 1 else "assembling and checking the sha256")
        if step > steps:
            self.close_bar()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            bar = self._bar
            if bar is not None:
                bar.refresh()

    def close_bar(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self.close_bar()
        super().close()


def install() -> BuildProgress:
    """Attach the bar to the library's model loggers. The root handlers keep their own level, so the
    INFO records that now reach them are shown only where the command line asked for INFO (--verbose)."""
    for root_handler in logging.getLogger().handlers:
        if root_handler.level == logging.NOTSET:
            root_handler.setLevel(logging.getLogger().level)
    handler = BuildProgress()
    logger = logging.getLogger("taskvec.models")
    for old in [h for h in logger.handlers if isinstance(h, BuildProgress)]:  # main() called again in-process
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    return handler
