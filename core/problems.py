"""What a check finds: a Problem (error or warning) with the rule it broke. The format rules (core/formats) and every
lint (quantize/lint.py for safetensors formats, quantize/gguf.py for GGUF) report these."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.rule}] {self.message}"


def error(rule, msg) -> Problem:
    return Problem("error", rule, msg)


def warning(rule, msg) -> Problem:
    return Problem("warning", rule, msg)
