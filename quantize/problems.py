"""What lint finds: a Problem (error or warning) with the rule it broke; every lint (safetensors formats, GGUF)
reports these. It lives in core/problems.py, where the format rules (core/formats) make them too."""
from __future__ import annotations

from core.problems import Problem, error, warning  # noqa: F401 - re-exported: quantize's usual import
