"""A vLLM general plugin (entry point `vllm.general_plugins`, loaded by vLLM in each of its processes).

What it does, only when serve puts `QWEN_W4_CPU_INT4=w4a8` into vLLM's environment (`serve/args.py:cpu_int4`):
vLLM's CPU W4A16 kernel (`CPUWNA16LinearKernel`) has two paths: `cpu_gemm_wna16` (unpacks int4 to bf16 and does
the math in bf16: compute-bound, slower than bf16 at batch 1) and its W4A8 path `int4_scaled_mm_cpu` (int4 weights,
activations quantized to int8 per token, int8 dot products). vLLM takes the W4A8 path only where the CPU reports
AMX tiles, yet the kernel also runs on AVX-512 VNNI CPUs without AMX (measured here: same results within 1%, 8-13x
faster than a bf16 matmul at batch 1). This plugin lets vLLM's own weight processing see AMX as present while it
decides, for that one call; nothing else in vLLM is touched, and without the variable it does nothing.
"""
from __future__ import annotations

import os

ENV = "QWEN_W4_CPU_INT4"
LOG_LINE = "qwen-w4 plugin: CPU int4 linears take vLLM's W4A8 path (int4_scaled_mm_cpu)"


def register() -> None:
    if os.environ.get(ENV, "").strip().lower() != "w4a8":
        return
    try:
        import torch
        from vllm.model_executor.kernels.linear.mixed_precision import cpu as kernel
    except ImportError:  # another vLLM layout: leave vLLM's own choice
        return
    cls = kernel.CPUWNA16LinearKernel
    original = cls.process_weights_after_loading
    if getattr(original, "_qwen_w4_w4a8", False):
        return

    import logging

    log = logging.getLogger("vllm.qwen_w4_plugin")  # under vLLM's own logger: lands in its log
    said = []

    def process_weights_after_loading(self, layer):
        real = torch.cpu._is_amx_tile_supported
        torch.cpu._is_amx_tile_supported = lambda: True
        try:
            return original(self, layer)
        finally:
            torch.cpu._is_amx_tile_supported = real
            if not said and not real() and getattr(layer, "use_w4a8", False):
                said.append(True)
                log.warning("%s", LOG_LINE)

    process_weights_after_loading._qwen_w4_w4a8 = True
    cls.process_weights_after_loading = process_weights_after_loading
