"""A stand-in format for tests/unit/test_format_registry.py: W4A16 with a made-up quant_method, int4 weights packed
two to a byte row by row (`qdata` uint8 [out, in/2], `qscale` fp16 [out, in/128]), and a `skip` list of module
prefixes that stay 16-bit. It is what adding a format takes: this one module (its FORMAT) and one REGISTRY line."""
from __future__ import annotations

from core.formats.base import Format, w4_sym_scheme
from core.problems import error


def check_scheme(qc: dict) -> list:
    out = w4_sym_scheme(qc)
    if qc.get("layout") != "rows":
        out.append(error("scheme", f"layout {qc.get('layout')!r}: only row-packed int4 is read"))
    return out


def vllm_quantized(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    return not any(name_v.startswith(s) for s in qc.get("skip") or [])


def packed_shape(tensors: dict, mod: str) -> tuple[int, int] | None:
    q = tensors.get(f"{mod}.qdata")
    return (q[0][0], q[0][1] * 2) if q else None


FORMAT = Format(
    "fake", "fake", None, "fake-int4", None, spellings=("fake-q4",),
    w4a16=True, check_scheme=check_scheme, vllm_quantized=vllm_quantized,
    packed=("qdata", "qscale"), packed_shape=packed_shape,
)
