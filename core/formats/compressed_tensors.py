"""compressed-tensors (llm-compressor's `pack-quantized`, AutoRound's `llm_compressor` export): weight_packed int32
[out, in/8], weight_scale [out, in/group], no zero points when symmetric; the scheme lives per config group, and vLLM
quantizes every Linear except those in `ignore` (exact names, or `re:` patterns). transformers reads it itself."""
from __future__ import annotations

import re

from core.formats.base import BITS, GROUP_SIZE, Format
from core.problems import error


def _groups(qc: dict) -> list[dict]:
    return [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)]


def scheme(qc: dict) -> tuple[int | None, int | None, bool | None]:
    """(bits, group_size, sym) of the first config group with weights."""
    for g in _groups(qc):
        w = g.get("weights") or {}
        if w:
            return w.get("num_bits"), w.get("group_size"), w.get("symmetric")
    return None, None, None


def weight_bits(qc: dict) -> int | None:
    """4 for weight-only int4 (W4A16) groups; None when activations are quantized too (not W4A16)."""
    for g in _groups(qc):
        if g.get("input_activations"):
            return None
        w = g.get("weights") or {}
        if isinstance(w, dict) and w.get("num_bits"):
            return int(w["num_bits"])
    return None


def check_scheme(qc: dict) -> list:
    out = []
    groups = (qc.get("config_groups") or {}).values()
    for g in groups:
        w = g.get("weights") or {}
        if w.get("num_bits") != BITS:
            out.append(error("scheme", f"num_bits {w.get('num_bits')}, expected {BITS}"))
        if w.get("group_size") != GROUP_SIZE:
            out.append(error("scheme", f"group_size {w.get('group_size')}, expected {GROUP_SIZE}"))
        if w.get("symmetric") is not True:
            out.append(error("scheme", "asymmetric weights: only symmetric W4A16 is supported"))
    if not groups:
        out.append(error("scheme", "compressed-tensors config without config_groups"))
    return out


def vllm_quantized(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    for ig in qc.get("ignore") or []:
        if ig.startswith("re:"):
            if re.match(ig[3:], name_v):
                return False
        elif ig == name_v:
            return False
    return True


def packed_shape(tensors: dict, mod: str) -> tuple[int, int] | None:
    """(out, in) of a pack-quantized module: weight_packed [out, in/8]."""
    p = tensors.get(f"{mod}.weight_packed")
    return (p[0][0], p[0][1] * 8) if p else None


FORMAT = Format(
    "compressed-tensors", "ct", "llm_compressor", "compressed-tensors", "compressed-tensors",
    spellings=("ct", "llm-compressor"),
    w4a16=True, verify_load="transformers",
    scheme=scheme, weight_bits=weight_bits, bits_required=True,
    check_scheme=check_scheme, vllm_quantized=vllm_quantized,
    packed=("weight_packed", "weight_scale", "weight_shape", "weight_zero_point"), packed_shape=packed_shape,
)
