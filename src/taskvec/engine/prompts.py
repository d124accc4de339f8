"""Moved to :mod:`taskvec.prompts` (tasks and engine both use it); kept importable for one release."""

from taskvec.prompts import DEFAULT_TEMPLATE, SPACED_TEMPLATE, PromptTemplate

__all__ = ["DEFAULT_TEMPLATE", "SPACED_TEMPLATE", "PromptTemplate"]
