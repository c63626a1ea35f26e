"""The `Format` record: one checkpoint format's names and its rules, as data and small functions.

A format module (core/formats/<name>.py) builds one `FORMAT = Format(...)`; core/formats/__init__.py registers it.
Every rule has a default below (what a format without that feature gets), so a module sets only what is its own.
The rules are read by quantize (lint, verify, export, card), serve (args, fit) and bench through the registry
(`core.formats.FORMATS[name]`, `core.formats.for_quant_method(method)`); none of them branches on a format's name.

Heavy imports (torch) stay inside the functions that need them: importing a format costs nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.problems import Problem, error

BITS = 4  # the one scheme exported here: W4A16, symmetric int4 weights, group size 128
GROUP_SIZE = 128

# (tensor leaf -> tensor or None) -> weight [out, in] float32: what a dequantize rule is given for one module
TensorGetter = Callable[[str], object]


# ---------------------------------------------------------------- default rules (and helpers for format modules)

def plain_scheme(qc: dict) -> tuple[int | None, int | None, bool | None]:
    """(bits, group_size, sym) of a quantization_config with top-level fields (GPTQ, AWQ, auto-round spellings)."""
    sym = qc.get("sym")
    if sym is None and "zero_point" in qc:  # AWQ spells symmetry as "no zero point"
        sym = not qc["zero_point"]
    return qc.get("bits") or qc.get("w_bit"), qc.get("group_size") or qc.get("q_group_size"), sym


def plain_bits(qc: dict) -> int | None:
    return plain_scheme(qc)[0]


def group_scheme(qc: dict) -> list[Problem]:
    """4 bits, group 128 (top-level `bits` / `group_size`)."""
    out = []
    if qc.get("bits") != BITS:
        out.append(error("scheme", f"bits {qc.get('bits')}, expected {BITS}"))
    if qc.get("group_size") != GROUP_SIZE:
        out.append(error("scheme", f"group_size {qc.get('group_size')}, expected {GROUP_SIZE}"))
    return out


def symmetric(qc: dict) -> list[Problem]:
    if qc.get("sym") is not True:
        return [error("scheme", "sym is not true: asymmetric checkpoints are rejected by vLLM (GPTQ) "
                                "or break (AWQ/auto-round)")]
    return []


def w4_sym_scheme(qc: dict) -> list[Problem]:
    """The default scheme check: 4 bits, group 128, symmetric."""
    return group_scheme(qc) + symmetric(qc)


def every_module(qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    return True


def weight_only(qc: dict) -> bool:
    return True


def zero_points(lin: int) -> dict[str, int]:
    """Bytes of 4-bit zero points, one per group of `lin` decoder-linear weights (symmetric: the constant 8)."""
    return {"zeros": lin // GROUP_SIZE // 2}


def no_extras(lin: int, text: dict) -> dict[str, int]:
    return {}


def unpack_int4(x, dim: int):
    """int32 tensor -> int4 values (0..15), 8 per int32, low nibble first, along `dim` (expanded 8x)."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=x.device)
    if dim == 0:
        v = (x[:, None, :] >> shifts[None, :, None]) & 0xF
        return v.reshape(x.shape[0] * 8, x.shape[1])
    v = (x[:, :, None] >> shifts[None, None, :]) & 0xF
    return v.reshape(x.shape[0], x.shape[1] * 8)


# ---------------------------------------------------------------- the record

@dataclass(frozen=True)
class Format:
    """A checkpoint format: what AutoRound, config.json, vLLM and users call it, and its rules."""

    # names
    name: str  # our name: bf16, autoround, gptq, awq, compressed-tensors, gguf
    suffix: str | None  # alias suffix for quantized variants (None: the 16-bit base itself)
    autoround_format: str | None  # AutoRound's `format=` value
    quant_method: str | None  # `quantization_config.quant_method` in config.json (as AutoRound writes it)
    vllm_method: str | None  # what vLLM names the method it picks on CPU (logged, never forced)
    spellings: tuple[str, ...] = ()  # other names accepted in --formats (lower case, `-` for `_`)
    quant_methods: tuple[str, ...] = ()  # other `quant_method` spellings that mean this format

    # where it is stored and served
    container: str = "safetensors"  # "safetensors" (config.json + *.safetensors, AutoRound's exports) or "gguf"
    engine: str = "vllm"  # the serve engine that runs it (serve/engines)
    w4a16: bool = False  # int4 weights (group 128) and 16-bit activations: vLLM's W4A16 kernels
    cpu_kernel: str | None = None  # W4A16 on vLLM's CPU build: the kernel it runs instead of CPUWNA16 (None:
    #                                CPUWNA16, where --cpu-int4 picks W4A8 or wna16)
    cpu_advice: str = ""  # serve on a CPU: what the measurements say to serve instead (appended to its kernel line)
    autoround_config: bool = False  # transformers loads it through AutoRound's `AutoRoundConfig`
    verify_load: str | None = None  # how verify reloads an export: "autoround-config" (transformers +
    #                                 AutoRoundConfig), "transformers" (it reads the format itself), "dequantize"
    #                                 (the packed tensors dequantized here into the 16-bit model)
    card_note: str = ""  # a paragraph the model card adds under "Use"

    # rules over config.json's quantization_config
    scheme: Callable[[dict], tuple[int | None, int | None, bool | None]] = field(default=plain_scheme, repr=False)
    weight_bits: Callable[[dict], int | None] = field(default=plain_bits, repr=False)  # serve: the weights' bits
    #                                                                     (None: not said, or not weight-only)
    bits_required: bool = False  # serve: W4A16 only when weight_bits says 4 (else also when it says nothing)
    check_scheme: Callable[[dict], list[Problem]] = field(default=w4_sym_scheme, repr=False)  # lint
    vllm_quantized: Callable[[dict, str, set[str]], bool] = field(default=every_module, repr=False)  # lint: would
    #     vLLM load module NAME_V (its naming, config lists renamed) as quantized, given the checkpoint's int modules

    # rules over the checkpoint's tensors
    packed: tuple[str, ...] = ()  # tensor leaves of one packed Linear, the packed weight first
    packed_shape: Callable[[dict, str], tuple[int, int] | None] | None = field(default=None, repr=False)
    #     (tensors name -> (shape, dtype), module) -> (out, in) features, None when the tensors are not its layout
    dequantize: Callable[[TensorGetter, int], object] | None = field(default=None, repr=False)  # verify

    # export and serve/fit
    complete_config: Callable[[dict, str, list[str]], str] | None = field(default=None, repr=False)  # export:
    #     (quantization_config, block prefix, 4-bit Linear names) -> what it added to AutoRound's config (in place)
    weight_extras: Callable[[int, dict], dict[str, int]] = field(default=no_extras, repr=False)  # fit: W4A16
    #     bytes beyond int4 values and fp16 scales, by name, for LIN decoder-linear weights and a text config
    bits_per_weight: dict[str, float] = field(default_factory=dict, compare=False)  # fit: by type, the default
    #                                                                                first (GGUF's, measured)

    @property
    def vllm_cpu_int4(self) -> bool:
        """vLLM's CPU build runs it through CPUWNA16, where --cpu-int4 picks W4A8 or wna16."""
        return self.w4a16 and self.cpu_kernel is None
