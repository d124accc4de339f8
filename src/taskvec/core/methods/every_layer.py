"""What the every-position methods share: one strength setting (chosen on dev), the layers they act at (None:
all) and the positions of their edits (default: every token, prompt and generated)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from taskvec.core.sites import ALL, Site
from taskvec.errors import TaskvecError


class EveryPositionMethod:
    """Base of the methods that act at every position of each layer of a range. A subclass names its strength
    setting (``strength_setting``: the constructor keyword and the recorded key) and its default."""

    acts = "every"
    strength_setting = "strength"
    default_strength = 1.0
    what = "strength"  # for messages

    def _configure(self, value: float, layers: Sequence[int] | None, position: int | str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TaskvecError(f"{self.what} must be a finite number, got {value!r}")
        self.layers = None if layers is None else [int(layer) for layer in layers]
        self.position = position
        Site(0, position)  # checks the position
        return float(value)

    @classmethod
    def from_settings(cls, settings: dict):
        value = settings.get(cls.strength_setting, cls.default_strength)
        return cls(**{cls.strength_setting: value, "layers": settings.get("layers"),
                      "position": settings.get("position", ALL)})  # fmt: skip

    def settings(self) -> dict:
        return {self.strength_setting: getattr(self, self.strength_setting), "layers": self.layers,
                "position": self.position}  # fmt: skip
