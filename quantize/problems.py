"""What lint finds: a Problem (error or warning) with the rule it broke; every lint (safetensors formats, GGUF)
reports these."""
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
