"""Which engine serves a model: `--engine auto|vllm|llamacpp` decided as a pure function of the artifact, the
hardware and the local catalog (what exists under the artifact root). Both engines speak the same OpenAI API.

Rules (each with a one-line reason that serve prints and doctor shows):
- a GGUF artifact -> llama.cpp (vLLM is not used for GGUF here);
- `auto` on a CPU without AMX (vLLM's CPU int4 path there unpacks to bf16 and is compute-bound; without AVX-512 it
  has no W4A16 kernel at all): the GGUF variant of the same family, when it exists locally — for a 4-bit request
  `<family>-gguf`, for the 16-bit base `<family>-gguf-bf16` (same precision, faster engine); for Qwen3-VL only a
  variant with its vision projector (`mmproj-*.gguf`), which llama.cpp's mtmd runs;
- vLLM everywhere else (GPUs, AMX CPUs, no GGUF variant, xllamacpp not installed).
- every choice is measured at 1 and 4 users and the reason says the numbers (`MEASURED`, per `cpu_class`): on AMX
  vLLM W4A8 wins both (reports/cpu-2026-12-03-amx); on AVX-512 without BF16 (no W4A8 kernel in vLLM's CPU build)
  llama.cpp's batching server wins both (reports/cpu-2026-12-07-llamacpp-server); on AVX-512 BF16/VNNI CPUs llama.cpp
  wins at 1 user and vLLM W4A8 won at 4 against the old one-request llama.cpp server (reports/cpu-2026-12-01);
- an explicit `--engine` wins, or fails in one line when it cannot work (llamacpp without a GGUF variant, vllm for
  a .gguf).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import catalog
from core.errors import UserError
from core.hardware import Hardware
from serve.engines import REGISTRY

ENGINES = ("auto", *REGISTRY)


@dataclass(frozen=True)
class Choice:
    """engine ("vllm" or "llamacpp"), why, and what to serve (`model`: the GGUF variant's folder when auto or
    --engine llamacpp switched to it, else None: serve what was asked for). Unpacks as (engine, reason)."""

    engine: str
    reason: str
    model: str | None = None

    def __iter__(self):
        return iter((self.engine, self.reason))


def _find_gguf(location: str | Path | None) -> Path | None:
    from core.artifact import gguf_file

    return gguf_file(Path(location)) if location else None


def gguf_variant_path(family_base_alias: str, bf16: bool, root: Path | None = None) -> Path | None:
    """The local GGUF artifact of a family (4-bit `<family>-gguf`, or `<family>-gguf-bf16`), if there is one (for a
    VL family: with its vision projector)."""
    from core.artifact import mmproj_file

    fam = catalog.variant(family_base_alias).family
    alias = catalog.quantized_alias(fam.base_alias, "gguf") + ("-bf16" if bf16 else "")
    folder = (root or catalog.artifact_root()) / alias
    if _find_gguf(folder) is None or (fam.modality == "vl" and mmproj_file(folder) is None):
        return None
    return folder


def llamacpp_installed() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


# What decided `auto` on CPUs, measured at 1 and 4 concurrent users (output tok/s, 4-bit rows; README "Hardware").
MEASURED = {
    "avx512-no-w4a8": ("measured on an AVX-512 CPU without BF16 (reports/cpu-2026-12-07-llamacpp-server, 4B shape): "
                       "llama.cpp Q4_K_M 2.99x vLLM bf16's decode at 1 user, and 2.41 vs 1.09 tok/s (vLLM AWQ, its "
                       "best 4-bit here) at 4 users"),
    "avx512-w4a8": ("measured on an AVX-512 BF16/VNNI CPU (reports/cpu-2026-12-01, 0.6B shape): llama.cpp Q4_K_M "
                    "63.9 vs vLLM W4A8 53.8 tok/s at 1 user; at 4 users vLLM W4A8 batched to 119.5 tok/s (vs 47.0 "
                    "for llama.cpp's old one-request server, not re-measured with its batching server): for many "
                    "users try --engine vllm"),
    "avx2": "vLLM has no W4A16 kernel on this CPU at all",
    "amx": ("measured on an AMX CPU (reports/cpu-2026-12-03-amx): vLLM W4A8 25.8 vs llama.cpp Q4_K_M 23.3 tok/s at "
            "1 user, 72.0 vs 19.2 at 4 users"),
}


def cpu_class(hw: Hardware) -> str:
    """The CPU classes the engine rule tells apart."""
    if hw.flag("amx_tile") and hw.w4a16_serving[0]:
        return "amx"
    if not hw.w4a16_serving[0]:
        return "avx2"
    return "avx512-w4a8" if hw.w4a8_default else "avx512-no-w4a8"


def _cpu_why(hw: Hardware) -> str:
    if not hw.w4a16_serving[0]:
        return "this CPU has no AVX-512, so vLLM's CPU build has no W4A16 kernel"
    if not hw.w4a8_default:
        return ("this CPU has no AMX and no W4A8 kernel in vLLM's CPU build, so vLLM's int4 path unpacks to bf16 and "
                "is compute-bound")
    return "this CPU has no AMX, so vLLM's W4A8 path is not measured faster than llama.cpp for one user"


def choose_engine(resolved: catalog.Resolved, hw: Hardware, requested: str = "auto", *,
                  find_variant: Callable[[str, bool], Path | None] = gguf_variant_path,
                  llamacpp_ok: bool | None = None) -> Choice:
    """The engine for `resolved` on `hw`. `find_variant(base_alias, bf16)` looks up the family's local GGUF
    variant (default: the artifact root); `llamacpp_ok` whether xllamacpp is installed (default: looked up).
    Raises UserError when the requested engine cannot serve the model."""
    req = _engine_name(requested)
    ok = llamacpp_installed() if llamacpp_ok is None else llamacpp_ok
    v = resolved.variant
    name = resolved.name
    is_gguf = resolved.source == "local" and _find_gguf(resolved.location) is not None

    if is_gguf:
        if req == "vllm":
            raise UserError(f"'{name}' is a GGUF artifact, which vLLM does not serve here",
                            "use --engine llamacpp (or auto), or serve a safetensors variant with vLLM")
        if not ok:
            raise UserError("llama.cpp's server (xllamacpp) is not installed (needed to serve GGUF)",
                            "`pip install -c constraints.txt -e .[llamacpp]`")
        return Choice("llamacpp", f"'{name}' is a GGUF artifact: llama.cpp serves it")

    gguf = None
    bf16 = not (v.is_quantized if v else False)
    if v is not None:
        gguf = find_variant(v.family.base_alias, bf16)
    want = catalog.quantized_alias(v.family.base_alias, "gguf") + ("-bf16" if bf16 else "") if v else None

    if req == "llamacpp":
        if gguf is None:
            make = (f"make it with `python -m quantize --model {v.family.base_alias} --formats gguf"
                    f"{' --gguf-type bf16' if bf16 else ''}`" if v else "pass a .gguf file or a GGUF artifact folder")
            raise UserError(f"'{name}' has no local GGUF variant{f' ({want})' if want else ''} for llama.cpp",
                            f"{make}, or use --engine vllm")
        if not ok:
            raise UserError("llama.cpp's server (xllamacpp) is not installed",
                            "`pip install -c constraints.txt -e .[llamacpp]`")
        return Choice("llamacpp", f"--engine llamacpp: serving the GGUF variant {gguf.name}", str(gguf))
    if req == "vllm":
        return Choice("vllm", "--engine vllm")

    # auto
    if hw.has_gpu:
        return Choice("vllm", "GPU: vLLM (Marlin/Machete W4A16 kernels)")
    if cpu_class(hw) == "amx":
        return Choice("vllm", "CPU with AMX: vLLM's W4A8 path runs on AMX tiles, " + MEASURED["amx"])
    why = _cpu_why(hw)
    if gguf is not None and ok:
        return Choice("llamacpp", f"{why}; llama.cpp serves the GGUF variant {gguf.name} instead "
                                  f"({'16-bit' if bf16 else '4-bit'}, like '{name}'; {MEASURED[cpu_class(hw)]})",
                      str(gguf))
    if gguf is not None:
        return Choice("vllm", f"{why}, and a GGUF variant exists ({gguf.name}) but llama.cpp's server "
                              "(xllamacpp) is not installed: vLLM")
    hint = (f"; `python -m quantize --model {v.family.base_alias} --formats gguf"
            f"{' --gguf-type bf16' if bf16 else ''}` makes {want} for llama.cpp") if v else ""
    return Choice("vllm", f"{why}; no local GGUF variant{f' ({want})' if want else ''}: vLLM{hint}")


def _engine_name(requested: str | None) -> str:
    req = (requested or "auto").lower().replace("-", "").replace(".", "").replace("_", "")
    req = {"llama": "llamacpp", "llamacppserver": "llamacpp"}.get(req, req)
    if req not in ("auto", *REGISTRY):
        raise UserError(f"unknown engine '{requested}'", f"use --engine {'|'.join(('auto', *REGISTRY))}")
    return req


def decide(model: str, hw: Hardware, requested: str = "auto") -> Choice:
    """`choose_engine` for what the user typed: a .gguf file, or anything `catalog.resolve` takes. An engine of
    the registry with no rule here (neither vLLM nor llama.cpp) is taken as asked; its plan() judges the model."""
    req = _engine_name(requested)
    if req not in ("auto", "vllm", "llamacpp"):
        return Choice(req, f"--engine {req}")
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"no such GGUF file: {model}", "check the path, or pass a GGUF artifact folder or alias")
        if (requested or "auto").lower() == "vllm":
            raise UserError(f"'{model}' is a GGUF file, which vLLM does not serve here",
                            "use --engine llamacpp (or auto)")
        return Choice("llamacpp", f"'{p.name}' is a GGUF file: llama.cpp serves it")
    return choose_engine(catalog.resolve(model), hw, requested)


def doctor_rows(hw: Hardware) -> list[tuple[str, bool | None, str]]:
    """What `--doctor` shows about the engines: (what, ok, detail); ok None = informational."""
    from serve.engines import get

    rows: list[tuple[str, bool | None, str]] = [r for name in REGISTRY for r in get(name).doctor_rows(hw)]
    if hw.has_gpu:
        auto = "vLLM (GPU)"
    elif cpu_class(hw) == "amx":
        auto = "vLLM (CPU with AMX; " + MEASURED["amx"] + ")"
    else:
        auto = (f"llama.cpp when a GGUF variant exists locally ({_cpu_why(hw)}; {MEASURED[cpu_class(hw)]}), else "
                "vLLM; `python -m quantize --formats gguf` makes one")
    rows.append(("engine auto", None, auto + " (VL: a GGUF variant with its vision projector, run by llama.cpp's mtmd)"
                                          if auto.startswith("llama.cpp") else auto))
    return rows
