"""GPTQ (AutoRound's `auto_gptq` export): qweight int32 [in/8, out], qzeros [in/group, out/8] (v1: zero points
minus one), scales fp16 [in/group, out], optional g_idx; symmetric, no act-order. vLLM reads its module list from
`modules_in_block_to_quantize` (substring match) or, without one, from the checkpoint's int tensors."""
from __future__ import annotations

import re

from core.formats.base import GROUP_SIZE, Format, group_scheme, symmetric, unpack_int4, zero_points
from core.problems import error

PACKED = ("qweight", "qzeros", "scales", "g_idx")


def check_scheme(qc: dict) -> list:
    out = group_scheme(qc) + symmetric(qc)
    if qc.get("desc_act"):
        out.append(error("scheme", "desc_act (act-order) is on: vLLM's CPU W4A16 kernel does not support it"))
    return out


def vllm_quantized(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    listed = qc.get("modules_in_block_to_quantize")
    if listed:
        flat = [x for s in listed for x in (s if isinstance(s, list) else [s])]
    else:
        flat = sorted(checkpoint_quantized_v)  # vLLM reads it from the safetensors dtypes
    q = (not flat) or any(x in name_v for x in flat)
    for pat in qc.get("dynamic") or {}:
        if pat.startswith("-:") and re.match(pat[2:], name_v):
            q = False
    return q


def packed_shape(tensors: dict, mod: str) -> tuple[int, int] | None:
    """(out, in) of a GPTQ-packed module: qweight [in/8, out], scales [in/group, out]."""
    q, s = tensors.get(f"{mod}.qweight"), tensors.get(f"{mod}.scales")
    if not q or not s or q[0][1] != s[0][1]:
        return None
    return s[0][1], q[0][0] * 8


def dequantize(tensor, group: int = GROUP_SIZE, zero_offset: int = 1):
    """GPTQ (v1) layout -> weight [out, in] (float32). v1 stores zero points minus one."""
    import torch

    qweight, qzeros, scales, g_idx = (tensor(leaf) for leaf in PACKED)
    w = unpack_int4(qweight, 0)  # [in, out]
    z = unpack_int4(qzeros, 1) + zero_offset  # [in/group, out]
    idx = g_idx.long() if g_idx is not None else torch.arange(w.shape[0]) // group
    return ((w - z[idx]).float() * scales.float()[idx]).t().contiguous()


def name_modules(qc: dict, block_prefix: str, linear_names: list[str]) -> str:
    """Name the quantized modules in the config explicitly. AutoRound's GPTQ export leaves the list out; vLLM then
    infers it from the safetensors dtypes, but transformers' loader (AutoRound's) assumes every block, the vision
    tower's included, is quantized. `block_name_to_quantize` bounds the loader to the language model;
    `modules_in_block_to_quantize` (GPTQModel's spelling, matched as substrings by vLLM) lists the Linears."""
    short = []
    for n in linear_names:
        rest = n[len(block_prefix) + 1:].split(".", 1)[-1]  # drop the layer number
        if rest not in short:
            short.append(rest)
    groups: dict[str, list[str]] = {}
    for s in short:
        groups.setdefault(s.split(".")[0] + ("o" if s.endswith("o_proj") else "")
                          + ("d" if s.endswith("down_proj") else ""), []).append(s)
    qc["block_name_to_quantize"] = block_prefix
    qc["modules_in_block_to_quantize"] = list(groups.values())
    return "named the 4-bit modules in the GPTQ config (block_name_to_quantize, modules_in_block_to_quantize)"


def gidx_bytes(t: dict) -> int:
    """GPTQ's g_idx: one int32 per input feature of every quantized linear of a text config."""
    h, i = int(t["hidden_size"]), int(t["intermediate_size"])
    q = int(t["num_attention_heads"]) * int(t.get("head_dim") or h // int(t["num_attention_heads"]))
    return int(t["num_hidden_layers"]) * (5 * h + q + i) * 4  # q, k, v, gate, up read hidden; o reads q; down reads i


def weight_extras(lin: int, text: dict) -> dict[str, int]:
    return {**zero_points(lin), "g_idx": gidx_bytes(text)}


FORMAT = Format(
    "gptq", "gptq", "auto_gptq", "gptq", "gptq", spellings=("auto-gptq",), quant_methods=("gptq-marlin",),
    w4a16=True, autoround_config=True, verify_load="autoround-config",
    check_scheme=check_scheme, vllm_quantized=vllm_quantized,
    packed=PACKED, packed_shape=packed_shape, dequantize=dequantize,
    complete_config=name_modules, weight_extras=weight_extras,
)
