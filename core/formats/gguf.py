"""GGUF: llama.cpp's single-file format (language model, plus a 16-bit mmproj projector for VL), built, linted and
described by quantize/gguf.py and served by llama.cpp. Its types' sizes are bits per weight, measured."""
from __future__ import annotations

from core.formats.base import Format

# bits per weight of the language model, measured on bench-text (reports/cpu-2026-12-01: Q4_K_M 0.269 GB,
# Q4_0 0.254 GB, BF16 0.898 GB for 0.449e9 params); the default type first
BITS_PER_WEIGHT = {"q4_k_m": 4.79, "q4_0": 4.52, "bf16": 16.0}
# share of the decoder linears' bytes that llama.cpp's CPU backend repacks into an interleaved copy at load on AVX2+
# CPUs (ggml-cpu repack: Q4_K -> q4_K_8x8, Q4_0 -> q4_0_8x8; the mapped file stays resident beside it). Q4_K_M keeps
# some tensors Q6_K: measured 1.765 of 2.171 GB Q4_K in the 4B shape's Q4_K_M file
REPACKED_SHARE = {"q4_k_m": 0.81, "q4_0": 1.0, "bf16": 0.0}


def file_type(file_name: str) -> str:
    """The GGUF type a file name says (llama.cpp's convention: `<name>-Q4_K_M.gguf`), the default when none."""
    n = file_name.upper()
    return "bf16" if "BF16" in n or "F16" in n else ("q4_0" if "Q4_0" in n else "q4_k_m")


def plan_name(file_name: str) -> str:
    """serve/fit.py's name for a .gguf file: `gguf` (the default type) or `gguf-TYPE` (gguf-q4_0, gguf-bf16)."""
    kind = file_type(file_name)
    return "gguf" if kind == next(iter(BITS_PER_WEIGHT)) else f"gguf-{kind}"


FORMAT = Format("gguf", "gguf", "gguf:q4_k_m", None, None, container="gguf", engine="llamacpp",
                bits_per_weight=BITS_PER_WEIGHT)
