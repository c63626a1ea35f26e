"""Roofline of batch-1 decoding: weight bytes read per token against the machine's memory bandwidth.

Decoding one token at batch 1 reads every decoder weight once (linears at their stored dtype, with
their 4-bit scales/zeros, plus norms) and the LM head; the embedding table is read one row per token
and the vision tower not at all. The sizes come from the safetensors headers (no weights loaded).
The bandwidth is a measured large-buffer copy (bytes read + bytes written per second, STREAM "copy"
convention). `limit tok/s = bandwidth / bytes per token`; achieved GB/s = bytes per token x tok/s.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from core import artifact
from core.errors import UserError
from core.formats import FORMATS

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
GROUPS = ("decoder_linear", "lm_head", "embedding", "vision", "other")


def read_header(path: Path) -> dict:
    """The JSON header of one .safetensors file (name -> {dtype, shape, data_offsets}; core.artifact reads it), a
    ValueError for a truncated or corrupt file."""
    problem = artifact.safetensors_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    header = dict(artifact.safetensors_header(path))
    header.pop("__metadata__", None)
    return header


def tensor_bytes(info: dict) -> int:
    start, end = info["data_offsets"]
    return int(end - start)


def packed_leaves() -> set[str]:
    """The tensor leaves of packed Linears in every registered format (qweight, scales, weight_packed ...)."""
    return {leaf for f in FORMATS.values() for leaf in f.packed}


def group_of(name: str) -> str:
    """Which part of the model a tensor belongs to (for bytes-per-token accounting)."""
    n = name.lower()
    if n.startswith(("visual.", "model.visual.", "vision_tower.", "model.vision_tower.")) or ".visual." in n:
        return "vision"
    if "embed_tokens" in n or n.endswith("wte.weight"):
        return "embedding"
    if n.startswith("lm_head.") or ".lm_head." in n:
        return "lm_head"
    if ".layers." in n and ("_proj." in n or n.rpartition(".")[2] in packed_leaves()):
        return "decoder_linear"
    return "other"


def gguf_group_of(name: str) -> str:
    """The same groups for llama.cpp's tensor names (token_embd, output, blk.N.*, mm.* / v.* for a projector)."""
    if name.startswith(("v.", "mm.")):
        return "vision"
    if name.startswith("token_embd."):
        return "embedding"
    if name.startswith("output."):
        return "lm_head"
    if name.startswith("blk.") and "norm" not in name:
        return "decoder_linear"
    return "other"


def per_token_bytes(groups: dict[str, int], tied: bool) -> int:
    """Bytes read per decoded token at batch 1 from bytes by group: every decoder weight (linears, norms) and the
    LM head; a tied head (no lm_head tensor) reads the whole embedding table instead. bench/predict.py applies the
    same rule to a plan's estimated sizes."""
    per_token = groups["decoder_linear"] + groups["other"] + groups["lm_head"]
    if groups["lm_head"] == 0 and tied:
        per_token += groups["embedding"]
    return per_token


def gguf_weights(path: Path) -> dict:
    """`weights` for a .gguf file: sizes from its tensor table (gguf-py's reader maps the file, loads nothing)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    groups = {g: 0 for g in GROUPS}
    dtypes: dict[str, dict[str, int]] = {g: {} for g in GROUPS}
    for t in reader.tensors:
        g, b, ty = gguf_group_of(t.name), int(t.n_bytes), t.tensor_type.name
        groups[g] += b
        dtypes[g][ty] = dtypes[g].get(ty, 0) + b
    tied = groups["lm_head"] == 0
    per_token = per_token_bytes(groups, tied)
    return {"files": 1, "tensors": len(reader.tensors), "gguf_bytes": path.stat().st_size,
            "bytes_by_group": groups, "dtypes_by_group": {g: v for g, v in dtypes.items() if v},
            "tied_embeddings": tied, "bytes_per_token": per_token}


def weights(model_dir: str | Path) -> dict:
    """Bytes by group and dtype from the safetensors headers (or a GGUF's tensor table), and bytes read per
    decoded token."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files and (lm := artifact.gguf_file(d)) is not None:  # the language model, not a VL model's mmproj
        return gguf_weights(lm)
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {d}")
    groups = {g: 0 for g in GROUPS}
    dtypes: dict[str, dict[str, int]] = {g: {} for g in GROUPS}
    n_tensors = 0
    for f in files:
        for name, info in read_header(f).items():
            g = group_of(name)
            b = tensor_bytes(info)
            groups[g] += b
            dtypes[g][info["dtype"]] = dtypes[g].get(info["dtype"], 0) + b
            n_tensors += 1
    tied = False
    try:
        cfg = artifact.read_config(d)
        tied = bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))
    except UserError:
        pass
    per_token = per_token_bytes(groups, tied)
    return {
        "files": len(files),
        "tensors": n_tensors,
        "safetensors_bytes": sum(f.stat().st_size for f in files),
        "bytes_by_group": groups,
        "dtypes_by_group": {g: v for g, v in dtypes.items() if v},
        "tied_embeddings": tied,
        "bytes_per_token": per_token,
    }


# ---------------------------------------------------------------- bandwidth

def copy_bandwidth(threads: int = 1, size_mib: int = 512, repeats: int = 8) -> dict:
    """Best-of-N copy of a large buffer split over `threads` threads (numpy's memcpy releases the GIL),
    in GB/s counting bytes read + bytes written."""
    import numpy as np

    threads = max(1, int(threads))
    n = size_mib * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    dst.fill(0.0)  # fault the pages in
    parts = list(zip(np.array_split(src, threads), np.array_split(dst, threads)))
    start, stop = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    rounds = repeats + 1

    def work(i: int) -> None:
        a, b = parts[i]
        for _ in range(rounds):
            start.wait()
            np.copyto(b, a)
            stop.wait()

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    best = float("inf")
    for r in range(rounds):
        t0 = time.perf_counter()
        start.wait()
        stop.wait()
        if r:  # the first round warms caches and page tables
            best = min(best, time.perf_counter() - t0)
    for t in pool:
        t.join()
    return {"gb_s": 2 * src.nbytes / best / 1e9, "threads": threads, "buffer_mib": size_mib, "tool": "numpy.copyto",
            "best_s": best}


def gpu_copy_bandwidth(size_mib: int = 1024, repeats: int = 10) -> dict:
    """Best-of-N device-to-device copy on the current CUDA device, read + write bytes per second."""
    import torch

    n = size_mib * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for r in range(repeats + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        if r:
            best = min(best, time.perf_counter() - t0)
    del src, dst
    torch.cuda.empty_cache()
    return {"gb_s": 2 * size_mib * 2**20 / best / 1e9, "buffer_mib": size_mib, "tool": "torch.Tensor.copy_ (cuda)",
            "best_s": best}


def measure_bandwidth(device: str = "cpu", cores: int = 1) -> dict:
    """Copy bandwidth on the GPU, or on 1 thread and on every usable core of the CPU."""
    if device != "cpu":
        r = gpu_copy_bandwidth()
        return {"device": device, "by_threads": {}, "gb_s": r["gb_s"], "tool": r["tool"]}
    by = {str(t): copy_bandwidth(threads=t)["gb_s"] for t in sorted({1, max(1, cores)})}
    return {"device": "cpu", "by_threads": by, "gb_s": max(by.values()), "tool": "numpy.copyto"}


def combine_bandwidth(before: dict, after: dict) -> dict:
    """Measured before and after the variants ran: the best of each (a ceiling), both kept as measured."""
    by = {t: max(g, (after.get("by_threads") or {}).get(t, 0.0)) for t, g in (before.get("by_threads") or {}).items()}
    return {**before, "by_threads": by, "gb_s": max(before["gb_s"], after["gb_s"]),
            "measurements": [{k: m.get(k) for k in ("by_threads", "gb_s")} for m in (before, after)]}


# ---------------------------------------------------------------- arithmetic

def limit_tok_s(bytes_per_token: float | None, bandwidth_gb_s: float | None) -> float | None:
    """Batch-1 decode ceiling: a token cannot come faster than its weights can be read."""
    if not bytes_per_token or not bandwidth_gb_s:
        return None
    return bandwidth_gb_s * 1e9 / bytes_per_token


def achieved_gb_s(bytes_per_token: float | None, tok_s: float | None) -> float | None:
    if not bytes_per_token or tok_s is None:
        return None
    return bytes_per_token * tok_s / 1e9


def roofline(bytes_per_token: float | None, tok_s: float | None, bandwidth_gb_s: float | None) -> dict:
    """gpt-fast style: bytes/token, achieved GB/s, the limit and the % of it reached."""
    lim = limit_tok_s(bytes_per_token, bandwidth_gb_s)
    ach = achieved_gb_s(bytes_per_token, tok_s)
    return {
        "bytes_per_token": bytes_per_token,
        "tok_s": tok_s,
        "bandwidth_gb_s": bandwidth_gb_s,
        "limit_tok_s": lim,
        "achieved_gb_s": ach,
        "pct_of_limit": (100.0 * tok_s / lim) if (lim and tok_s is not None) else None,
    }
