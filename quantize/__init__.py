"""W4A16 quantization of Qwen3 / Qwen3-VL with AutoRound: `python -m quantize`, or `quantize.api.quantize(...)`.

Modules: recipes (the recipe table, flag -> AutoRound kwargs), calibration (data and its hash), layout (4-bit vs
16-bit modules), export (AutoRound run, complete folders, atomic placement), lint (vLLM/transformers readings of
each export), verify (reload, KL / top-1 vs the 16-bit base, tuned and RTN), card (README.md), api (the verb).
"""
