"""AWQ (AutoRound's `auto_awq` export, gemm layout): qweight int32 [in, out/8] and qzeros [in/group, out/8] in AWQ's
interleaved nibble order, scales fp16 [in/group, out]; symmetric means no zero point. vLLM skips the modules in
`modules_to_not_convert` (substring match), or without that list reads them from the checkpoint's int tensors."""
from __future__ import annotations

from core.formats.base import GROUP_SIZE, Format, group_scheme, unpack_int4, zero_points
from core.problems import error

PACKED = ("qweight", "qzeros", "scales")
REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]  # AWQ's nibble interleave, undone


def check_scheme(qc: dict) -> list:
    out = group_scheme(qc)
    if qc.get("zero_point") is not False:
        out.append(error("scheme", "AWQ with zero_point: asymmetric; only symmetric W4A16 is supported"))
    if str(qc.get("version", "gemm")).lower() != "gemm":
        out.append(error("scheme", f"AWQ version {qc.get('version')}: vLLM reads the gemm layout"))
    return out


def vllm_quantized(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    skip = qc.get("modules_to_not_convert")
    if skip is None or skip == []:
        return name_v in checkpoint_quantized_v  # vLLM derives the list from the safetensors dtypes
    return not any(s in name_v for s in skip)


def packed_shape(tensors: dict, mod: str) -> tuple[int, int] | None:
    """(out, in) of an AWQ-packed module: qweight [in, out/8], scales [in/group, out]."""
    q, s = tensors.get(f"{mod}.qweight"), tensors.get(f"{mod}.scales")
    if not q or not s or q[0][1] * 8 != s[0][1]:
        return None
    return s[0][1], q[0][0]


def dequantize(tensor, group: int = GROUP_SIZE):
    """AWQ gemm layout -> weight [out, in] (float32), the arithmetic of vLLM's AWQ kernels."""
    import torch

    qweight, qzeros, scales = (tensor(leaf) for leaf in PACKED)
    w = unpack_int4(qweight, 1)  # [in, out] in AWQ's interleaved order
    z = unpack_int4(qzeros, 1)  # [in/group, out]
    order = torch.arange(w.shape[1]).reshape(-1, 8)[:, REVERSE_ORDER].reshape(-1)
    w, z = w[:, order], z[:, order]
    z = z.repeat_interleave(group, dim=0)
    s = scales.float().repeat_interleave(group, dim=0)
    return ((w - z).float() * s).t().contiguous()


FORMAT = Format(
    "awq", "awq", "auto_awq", "awq", "awq", spellings=("auto-awq",), quant_methods=("awq-marlin",),
    # AutoRound has no CPU kernel for AWQ without gptqmodel/autoawq: verify reads the packed weights itself
    w4a16=True, autoround_config=True, verify_load="dequantize",
    card_note=("On a CPU, transformers needs an AWQ kernel package (`gptqmodel` or `autoawq`) for this format; "
               "vLLM reads it as is. This project's verify reads the packed AWQ weights directly."),
    check_scheme=check_scheme, vllm_quantized=vllm_quantized,
    packed=PACKED, packed_shape=packed_shape, dequantize=dequantize,
    weight_extras=lambda lin, text: zero_points(lin),
)
