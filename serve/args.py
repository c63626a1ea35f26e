"""vLLM's command line, derived from the artifact and the hardware: one pure mapping, as data.

`model_info(resolved)` reads what matters from a checkpoint's config.json (the only I/O here);
`vllm_command(info, hw, opts)` turns that, the detected hardware and the user's options into
vLLM's argv and the environment it needs. Nothing here starts a process, so every rule is unit-tested.

Rules (each in one place below):
- the quantization method comes from the checkpoint: `--quantization` is never passed, so vLLM picks
  its fastest kernel (Marlin/Machete on GPU, its wna16 kernel on CPU);
- a vision-language model gets `--limit-mm-per-prompt`; the served name is the alias;
- GPU: `--gpu-memory-utilization`, `--tensor-parallel-size` x `--data-parallel-size` (replicas behind one
  endpoint) x `--pipeline-parallel-size` (checked against the visible GPUs), `--distributed-executor-backend ray`
  for several machines; a `--dtype` after `--` replaces serve's own;
- CPU: `--dtype bfloat16`, `--enforce-eager` by default (see `_eager`), env VLLM_CPU_KVCACHE_SPACE sized
  from the model and free RAM, VLLM_HOST_IP=127.0.0.1 (vLLM's internal queues stay on loopback);
- the API key travels to vLLM in env VLLM_API_KEY (not argv, which every local user can read with `ps`);
  it is required when the server listens beyond loopback; printed commands mask it;
- only safetensors weights are loaded (`--load-format safetensors`); no `--trust-remote-code` unless passed after `--`;
- W4A16 checkpoints on a CPU without vLLM's int4 kernel are refused (`w4a16_refusal`) unless forced;
- CPU int4 path (`cpu_int4`): on AVX-512 VNNI CPUs without AMX, vLLM's own W4A8 kernel (int8 activations) instead
  of its compute-bound wna16 one, through env QWEN_W4_CPU_INT4=w4a8 and the plugin in serve/vllm_plugin.py.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from core.artifact import read_config  # serve's one config reader (re-exported: serve.args.read_config)
from core.catalog import Resolved
from core.errors import UserError
from core.formats import FORMATS, Format, for_quant_method
from core.hardware import Hardware

API_KEY_ENV = "QWEN_W4_API_KEY"  # the user's default for --api-key
VLLM_PYTHON_ENV = "QWEN_W4_VLLM_PYTHON"  # a Python that has vLLM (vLLM in another venv)
SECRET_ENV = ("VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_FLAGS = ("--api-key",)
MASK = "***"
QWEN_ARCHS = ("Qwen3ForCausalLM", "Qwen3VLForConditionalGeneration", "Qwen3MoeForCausalLM",
              "Qwen3VLMoeForConditionalGeneration")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` fails with the vllm-cpu distribution


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs to know about a checkpoint (from its config.json, or the catalog)."""

    location: str  # folder or Hub id, passed as --model
    served_name: str  # the alias (or folder name / Hub id)
    source: str = "local"  # "local" or "hub"
    modality: str = "text"  # "text" or "vl"
    architecture: str | None = None
    quant_method: str | None = None  # quantization_config.quant_method, its format's spelling (None: 16-bit)
    bits: int | None = None
    dtype: str | None = None  # config's dtype
    max_model_len: int | None = None  # the catalog's default context (None: vLLM's, from the config)
    kv_bytes_per_token: int | None = None  # bf16 KV cache per token (None: unknown)
    config_known: bool = True  # False: a Hub id whose config.json is not cached (catalog facts only)
    hub_cached: bool = False  # a Hub id whose files are in the local Hugging Face cache
    bf16_alias: str | None = None  # the catalog's 16-bit base of a quantized variant

    @property
    def format(self) -> Format:
        """The checkpoint's format (core/formats), from its quant_method."""
        return for_quant_method(self.quant_method)

    @property
    def is_w4a16(self) -> bool:
        f = self.format
        return f.w4a16 and (self.bits == 4 or (self.bits is None and not f.bits_required))


@dataclass(frozen=True)
class ServeOptions:
    """Every serve option of every engine, gathered once (serve.options() builds it from keywords, the CLI from
    its flags); each engine reads the fields it has a use for."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_model_len: int | None = None  # None: the catalog's default for the model, else vLLM's
    served_name: str | None = None  # None: the alias
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1  # GPU: model replicas behind one API server (vLLM balances requests over them)
    distributed_backend: str | None = None  # None: vLLM's default (one machine); "ray": several machines
    gpu_memory_utilization: float = 0.90
    kv_cache_gib: int | None = None  # CPU KV cache (GiB); None: sized from the model and free RAM
    enforce_eager: bool | None = None  # None: on for CPU, off for GPU
    images_per_prompt: int = 2
    python: str | None = None  # the interpreter that has vLLM (None: $QWEN_W4_VLLM_PYTHON, else this one)
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # after `--`, passed verbatim
    force: bool = False  # start even where a known limitation says it will fail
    cpu_int4: str = "auto"  # CPU W4A16 kernel path: auto | w4a8 | w4a16 (see cpu_int4)
    n_threads: int | None = None  # llama.cpp threads (None: the usable cores)
    parallel: int | None = None  # llama.cpp slots (None: 4, shortened contexts where RAM is short)


# ---------------------------------------------------------------- reading a checkpoint

def hub_cached_config(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache is "not cached"
        return None
    return hit if isinstance(hit, str) else None


def model_info(resolved: Resolved) -> ModelInfo:
    """config.json of a local folder or a cached Hub id -> ModelInfo; else the catalog's facts."""
    v = resolved.variant
    base = {"location": resolved.location, "served_name": resolved.served_name, "source": resolved.source,
            "max_model_len": v.family.max_model_len if v else None,
            "bf16_alias": v.family.base_alias if v and v.is_quantized else None}
    cfg_path: str | Path | None = None
    if resolved.source == "local":
        cfg_path = resolved.location
    else:
        hit = hub_cached_config(resolved.location)
        if hit:
            cfg_path = Path(hit).parent
            base["hub_cached"] = True
    if cfg_path is not None:
        return info_from_config(read_config(cfg_path), **base)
    if v is not None:  # a catalog Hub id, not downloaded yet: the catalog knows enough
        return ModelInfo(**base, modality=v.modality, architecture=v.family.architecture,
                         quant_method=v.format.quant_method, bits=4 if v.is_quantized else None,
                         dtype="bfloat16", config_known=False)
    return ModelInfo(**base, modality="text", config_known=False)


def info_from_config(cfg: dict, **base) -> ModelInfo:
    """The pure half of `model_info`: a parsed config.json -> ModelInfo."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs and isinstance(archs[0], str) else None
    modality = "vl" if ("vision_config" in cfg or (arch or "").endswith("ForConditionalGeneration")) else "text"
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    qc = cfg.get("quantization_config") or text.get("quantization_config") or {}
    method, bits = None, None
    if isinstance(qc, dict) and qc:
        f = for_quant_method(str(qc.get("quant_method") or ""))  # any spelling -> the format's own
        method = f.quant_method
        bits = f.weight_bits(qc)
        bits = int(bits) if isinstance(bits, (int, float, str)) and str(bits).isdigit() else None
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return ModelInfo(**base, modality=modality, architecture=arch, quant_method=method, bits=bits,
                     dtype=str(dtype) if dtype else None, kv_bytes_per_token=kv_bytes_per_token(text))


def kv_bytes_per_token(text: dict) -> int | None:
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text.get("num_attention_heads") or 0)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return layers * kv_heads * head_dim * 2 * 2  # K and V, 2 bytes each


# ---------------------------------------------------------------- the mapping

def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_api_key() -> str | None:
    return os.environ.get(API_KEY_ENV) or None


def w4a16_refusal(info: ModelInfo, hw: Hardware) -> UserError | None:
    """The one rule for W4A16 checkpoints on hardware whose vLLM build lacks the kernel (None: fine)."""
    if not info.is_w4a16:
        return None
    ok, why = hw.w4a16_serving
    if ok:
        return None
    gguf = (f"; for 4 bits on this CPU make a GGUF for llama.cpp: `python -m quantize --model "
            f"{info.bf16_alias or 'BASE'} --formats gguf`" if info.modality == "text" else "")
    return UserError(
        f"cannot serve the W4A16 checkpoint '{info.served_name}' here: {why}",
        f"serve the bf16 variant{f' ({info.bf16_alias})' if info.bf16_alias else ''}, or use a GPU or an AVX-512 CPU "
        f"(--force starts it anyway; it fails on the first request){gguf}")


CPU_INT4_PATHS = ("auto", "w4a8", "w4a16")
CPU_INT4_ENV = "QWEN_W4_CPU_INT4"  # read by serve/vllm_plugin.py inside vLLM's processes


def cpu_int4(info: ModelInfo, hw: Hardware, requested: str = "auto") -> str | None:
    """Which of vLLM's CPU int4 paths a W4A16 checkpoint takes: "w4a8" (int4 weights, int8 per-token activations,
    `int4_scaled_mm_cpu`) or "w4a16" (`cpu_gemm_wna16`, bf16 math); None where it does not apply (GPU, 16-bit).
    auto: w4a8 wherever vLLM's CPU build has it and the CPU has VNNI or AMX (`Hardware.w4a8_default`; vLLM itself
    picks it on AMX CPUs, the plugin extends that choice to VNNI CPUs without AMX, where wna16 is slower than bf16),
    else w4a16; an explicit w4a8 where the kernel is missing is refused in one line. This is the kernel of GPTQ, AWQ and
    compressed-tensors checkpoints; vLLM runs AutoRound checkpoints (`inc`) on CPU with AutoRound's own kernel
    (auto-round-lib, in the `cpu` extra) whatever this says."""
    if requested not in CPU_INT4_PATHS:
        raise UserError(f"unknown CPU int4 path '{requested}'", f"use --cpu-int4 {'|'.join(CPU_INT4_PATHS)}")
    if hw.has_gpu or not info.is_w4a16:
        return None
    if requested == "w4a8" and not hw.w4a8_kernel[0]:
        raise UserError(f"--cpu-int4 w4a8 cannot run here: {hw.w4a8_kernel[1]}",
                        "use --cpu-int4 w4a16 (or auto), or serve a GGUF variant with llama.cpp")
    if requested != "auto":
        return requested
    return "w4a8" if hw.w4a8_default else "w4a16"


def cpu_agreement(hw: Hardware, path: str | None, fmt: str | None = None) -> tuple[bool, str]:
    """Whether vLLM's greedy tokens on this CPU equal transformers' on the same checkpoint (exact), and why not.
    `path` is `cpu_int4(...)` (None: a 16-bit model). Measured (tests/e2e/test_serve.py checks both halves):
    exact on AVX2 / AVX-512 CPUs without AMX for bf16 and the wna16 path; on AMX CPUs vLLM's own GEMMs run on AMX
    tiles (its sgl kernels and oneDNN for bf16 linears, `isa_hint="amx"` for wna16) and sum in another order than
    torch, so near-ties of a random model flip: there the served tokens are transformers' argmax within a small
    logprob margin instead. W4A8 quantizes activations to int8 per token: a larger margin everywhere."""
    if hw.has_gpu:
        return False, "GPU kernels (Marlin/Machete, FlashAttention) sum in another order than transformers"
    if fmt == "autoround" and not hw.flag("avx512_bf16"):
        return False, ("AutoRound's CPU kernel (vLLM's inc path) is not bit-exact with its transformers reload on CPUs "
                       "without AVX512_BF16 (measured 2026-12-07: greedy tokens of tiny-vl part at position 6)")
    if path == "w4a8":
        return False, "W4A8 quantizes activations to int8 per token (int4_scaled_mm_cpu)"
    if hw.flag("amx_tile"):
        return False, ("vLLM's CPU GEMMs run on AMX tiles here and sum in another order than torch's; vLLM has no "
                       "bit-exact path on this CPU")
    return True, "bf16 math, measured equal to transformers' greedy tokens on CPUs without AMX"


CPU_INT4_KERNELS = {"w4a8": "int4_scaled_mm_cpu: int4 weights, int8 per-token activations",
                    "w4a16": "cpu_gemm_wna16: int4 unpacked to bf16, bf16 math"}


def cpu_int4_line(info: ModelInfo, hw: Hardware, requested: str = "auto") -> str | None:
    """The one line serve prints about a W4A16 checkpoint's CPU kernel (None where no choice applies)."""
    path = cpu_int4(info, hw, requested)
    if path is None:
        return None
    if info.format.cpu_kernel:
        applies = "/".join(f.name for f in FORMATS.values() if f.vllm_cpu_int4)
        advice = f"; {info.format.cpu_advice}" if info.format.cpu_advice else ""
        return f"cpu int4: {info.format.cpu_kernel}; --cpu-int4 applies to {applies}{advice}"
    how = "vLLM's own choice on AMX" if hw.flag("amx_tile") and path == "w4a8" else (
        "serve's choice (--cpu-int4 auto)" if requested == "auto" else f"--cpu-int4 {requested}")
    exact, why = cpu_agreement(hw, path)
    return (f"cpu int4: {path} ({CPU_INT4_KERNELS[path]}{', AMX tiles' if hw.flag('amx_tile') else ''}), {how}; "
            f"{'tokens equal transformers' if exact else 'not bit-exact: ' + why}")


def kv_cache_gib(info: ModelInfo, hw: Hardware, max_model_len: int | None, sequences: int = 4) -> int:
    """CPU KV-cache size (GiB, an integer as vLLM wants): room for `sequences` full-length sequences,
    at least 1, at most a quarter of the free RAM (never the 90% vLLM reserves when unset)."""
    cap = max(1, int(hw.mem_available_gib * 0.25))
    if info.kv_bytes_per_token and max_model_len:
        need = math.ceil(info.kv_bytes_per_token * max_model_len * sequences / 2**30)
    else:
        need = 4
    return max(1, min(need, cap))


def _eager(opts: ServeOptions, hw: Hardware) -> bool:
    """CPU: eager by default. vLLM's CPU compile adds ~40 s to every start (more on a busy 2-core box)
    and CPU decode time is spent in the weight GEMMs, which compilation does not change.
    GPU: CUDA graphs are where batch-1 decode speed comes from, so never eager unless asked."""
    if opts.enforce_eager is not None:
        return opts.enforce_eager
    return not hw.has_gpu


def _dtype(info: ModelInfo, hw: Hardware) -> str:
    """bf16 for Qwen3 (trained in bf16; AutoRound's GPTQ/AWQ exports write float16 only by convention,
    and vLLM's W4A16 kernels take bf16 activations) and always on CPU (its tested path); else the config's.
    float16 on a GPU below compute capability 8.0 (no bf16 there: T4, V100)."""
    if hw.has_gpu and any(g.capability is not None and g.capability < (8, 0) for g in hw.gpus):
        return "float16"
    if not hw.has_gpu or info.architecture in QWEN_ARCHS or info.dtype == "bfloat16":
        return "bfloat16"
    return "auto"


def _check_parallel(opts: ServeOptions, hw: Hardware) -> None:
    tp, pp, dp = opts.tensor_parallel_size, opts.pipeline_parallel_size, opts.data_parallel_size
    if tp < 1 or pp < 1 or dp < 1:
        raise UserError("--tensor-parallel-size, --pipeline-parallel-size and --data-parallel-size must be at least 1")
    if opts.distributed_backend not in (None, "mp", "ray"):
        raise UserError(f"unknown --distributed-executor-backend '{opts.distributed_backend}'", "use mp or ray")
    if not hw.has_gpu:
        if tp * pp * dp > 1:
            raise UserError(f"--tensor-parallel-size {tp} / --pipeline-parallel-size {pp} / --data-parallel-size {dp} "
                            "need GPUs, and none is visible here", "drop them to serve on this CPU, or run on a GPU "
                            "machine")
        return
    if opts.distributed_backend == "ray":
        return  # the Ray cluster, not this machine, holds the GPUs (multi-node)
    if tp * pp * dp > len(hw.gpus):
        raise UserError(
            f"--tensor-parallel-size {tp} x --pipeline-parallel-size {pp} x --data-parallel-size {dp} needs "
            f"{tp * pp * dp} GPUs, {len(hw.gpus)} visible (CUDA_VISIBLE_DEVICES)",
            "lower it, or for several machines start a Ray cluster and add --distributed-executor-backend ray")


def _given(extra: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in extra)


def vllm_command(info: ModelInfo, hw: Hardware, opts: ServeOptions) -> tuple[list[str], dict[str, str]]:
    """(argv, env additions) that start vLLM's OpenAI server for `info` on `hw`. Pure: raises UserError
    for combinations that cannot work, starts nothing."""
    api_key = opts.api_key
    key_in_extras = _given(opts.extra_args, "--api-key")
    if not is_loopback(opts.host) and not (api_key or key_in_extras):
        raise UserError(f"--host {opts.host} exposes the server beyond this machine, and no API key is set",
                        f"pass --api-key KEY or set {API_KEY_ENV} (clients send it as their bearer token)")
    _check_parallel(opts, hw)
    if not opts.force and (refusal := w4a16_refusal(info, hw)):
        raise refusal
    max_len = opts.max_model_len or info.max_model_len

    argv = [opts.python or "python", "-m", SERVER_MODULE,
            "--model", info.location,
            "--served-model-name", opts.served_name or info.served_name,
            "--host", opts.host, "--port", str(opts.port),
            *(() if _given(opts.extra_args, "--dtype") else ("--dtype", _dtype(info, hw))),
            "--load-format", "safetensors"]  # never unpickle .bin/.pt weights
    if max_len:
        argv += ["--max-model-len", str(max_len)]
    if info.modality == "vl":
        argv += ["--limit-mm-per-prompt", json.dumps({"image": opts.images_per_prompt, "video": 0},
                                                     separators=(",", ":"))]
    env = {"VLLM_NO_USAGE_STATS": "1"}
    if info.source == "local":
        env["HF_HUB_OFFLINE"] = "1"  # a folder needs no Hub (a Hub id keeps the user's setting)
    if hw.has_gpu:
        argv += ["--gpu-memory-utilization", f"{opts.gpu_memory_utilization:g}",
                 "--tensor-parallel-size", str(opts.tensor_parallel_size)]
        if opts.pipeline_parallel_size > 1:
            argv += ["--pipeline-parallel-size", str(opts.pipeline_parallel_size)]
        if opts.data_parallel_size > 1:
            argv += ["--data-parallel-size", str(opts.data_parallel_size)]
        if opts.distributed_backend:
            argv += ["--distributed-executor-backend", opts.distributed_backend]
    else:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(opts.kv_cache_gib or kv_cache_gib(info, hw, max_len))
        env["VLLM_HOST_IP"] = "127.0.0.1"
        path = cpu_int4(info, hw, opts.cpu_int4)
        if path == "w4a8":
            if not hw.flag("amx_tile"):  # with AMX vLLM takes W4A8 by itself; the plugin is for CPUs without it
                env[CPU_INT4_ENV] = "w4a8"
            env["VLLM_CPU_INT4_W4A8"] = "1"
        elif path == "w4a16":
            env["VLLM_CPU_INT4_W4A8"] = "0"  # also on AMX CPUs, where vLLM would take W4A8 itself
    if _eager(opts, hw):
        argv.append("--enforce-eager")
    if api_key:
        env["VLLM_API_KEY"] = api_key
    argv += list(opts.extra_args)
    return argv, env


def shown_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The command as a shell line, secrets masked (what serve prints and writes to the run folder)."""
    parts = [f"{k}={MASK if k in SECRET_ENV else shlex.quote(v)}" for k, v in (env or {}).items()]
    masked, hide_next = [], False
    for a in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
        elif a in SECRET_FLAGS:
            masked.append(a)
            hide_next = True
        elif any(a.startswith(f + "=") for f in SECRET_FLAGS):
            masked.append(a.split("=", 1)[0] + "=" + MASK)
        else:
            masked.append(a)
    return " ".join(parts + [shlex.quote(a) for a in masked])
