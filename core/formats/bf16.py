"""The 16-bit base model (bf16 safetensors, as published): no quantization_config, every default rule."""
from __future__ import annotations

from core.formats.base import Format

FORMAT = Format("bf16", None, None, None, None)
