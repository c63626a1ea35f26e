"""AutoRound's own format (`auto_round`, packed as auto_gptq: GPTQ's tensor layout). vLLM runs it as `inc`: the
modules under `block_name_to_quantize` are quantized, `extra_config` overrides single modules; on its CPU build with
AutoRound's own kernel (auto-round-lib), not CPUWNA16."""
from __future__ import annotations

import re

from core.formats import gptq
from core.formats.base import Format, group_scheme, symmetric, zero_points
from core.problems import error


def check_scheme(qc: dict) -> list:
    out = group_scheme(qc) + symmetric(qc)
    pf = str(qc.get("packing_format", "auto_round:auto_gptq"))
    if not pf.startswith("auto_round"):
        out.append(error("scheme", f"unexpected packing_format {pf}"))
    return out


def _re_full(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def vllm_quantized(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    for key, cfg in (qc.get("extra_config") or {}).items():
        if key == name_v or name_v.endswith("." + key) or _re_full(key, name_v):
            return int(cfg.get("bits", qc.get("bits", 4))) < 16
    blocks = qc.get("block_name_to_quantize") or qc.get("to_quant_block_names")
    if isinstance(blocks, str):
        blocks = blocks.split(",")
    if blocks:
        return any(name_v.startswith(b) for b in blocks)
    return not name_v.endswith("lm_head")


FORMAT = Format(
    "autoround", "autoround", "auto_round", "auto-round", "inc", spellings=("auto-round",),
    quant_methods=("intel/auto-round", "inc"),
    w4a16=True, cpu_kernel="AutoRound's own CPU kernel (auto-round-lib)",
    cpu_advice=("slower than the 16-bit model on a CPU (measured 0.57-0.85x vLLM bf16, README 'Hardware'), while the "
                "GPTQ or AWQ export of the same model runs vLLM's W4A8 kernel at 2.0-3.4x: serve that one on a CPU"),
    autoround_config=True, verify_load="autoround-config",
    check_scheme=check_scheme, vllm_quantized=vllm_quantized,
    packed=gptq.PACKED, packed_shape=gptq.packed_shape, dequantize=gptq.dequantize,
    weight_extras=lambda lin, text: zero_points(lin),
)
