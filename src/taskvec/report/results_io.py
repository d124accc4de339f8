"""Moved to :mod:`taskvec.io.atomic` (IO sits below everything); kept importable for one release."""

from taskvec.io.atomic import write_json_atomic, write_jsonl_atomic, write_text_atomic

__all__ = ["write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]
