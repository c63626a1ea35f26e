"""The checkpoint formats (the format registry): our name for each and every other spelling of it that a reader
or a user meets (AutoRound's `format=`, config.json's `quant_method`, the alias suffix, vLLM's method name,
`--formats` spellings). core.catalog re-exports it; it lives apart so that core.artifact, which reads formats,
imports nothing that builds models (core.catalog builds tiny models on first use, and core.tiny writes with
core.artifact)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    """A checkpoint format and what AutoRound, config.json, vLLM and users call it."""

    name: str  # our name: bf16, autoround, gptq, awq, compressed-tensors, gguf
    suffix: str | None  # alias suffix for quantized variants (None: the base itself)
    autoround_format: str | None  # AutoRound's `format=` value
    quant_method: str | None  # `quantization_config.quant_method` in config.json (as AutoRound writes it)
    vllm_method: str | None  # what vLLM names the method it picks on CPU (logged, never forced)
    spellings: tuple[str, ...] = ()  # other names accepted in --formats (lower case, `-` for `_`)
    quant_methods: tuple[str, ...] = ()  # other `quant_method` spellings that mean this format


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("bf16", None, None, None, None),
        Format("autoround", "autoround", "auto_round", "auto-round", "inc", spellings=("auto-round",),
               quant_methods=("intel/auto-round", "inc")),
        Format("gptq", "gptq", "auto_gptq", "gptq", "gptq", spellings=("auto-gptq",), quant_methods=("gptq-marlin",)),
        Format("awq", "awq", "auto_awq", "awq", "awq", spellings=("auto-awq",), quant_methods=("awq-marlin",)),
        Format("compressed-tensors", "ct", "llm_compressor", "compressed-tensors", "compressed-tensors",
               spellings=("ct", "llm-compressor")),
        Format("gguf", "gguf", "gguf:q4_k_m", None, None),  # llama.cpp's format (served by llama.cpp; VL + mmproj)
    )
}
QUANT_FORMATS = [n for n, f in FORMATS.items() if f.suffix]


def _norm(s: str) -> str:
    return s.strip().lower().replace("_", "-")


def format_named(name: str) -> str | None:
    """Our format name for a user's spelling (`auto_round`, `ct`, `GPTQ` ...), or None when it names none."""
    n = _norm(name)
    for f in FORMATS.values():
        if n == f.name or n in f.spellings:
            return f.name
    return None


def format_of_quant_method(method: str | None) -> str:
    """Our format name for a config's `quantization_config.quant_method` (None: the 16-bit base; a method no
    format has comes back as given, lower-cased)."""
    m = _norm(method or "")
    for f in FORMATS.values():
        if f.quant_method and (m == f.quant_method or m in f.quant_methods):
            return f.name
    return m or "bf16"
