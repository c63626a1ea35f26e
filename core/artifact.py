"""Reading an artifact folder: the one place that knows its files. config.json, safetensors headers (no torch, no
tensor read), the GGUF language model and vision projector files, and `inspect()`: what a folder holds (format,
modality, quantization, files, bytes). Writers use `atomic_folder` so a half-written folder is never seen.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

MMPROJ_PREFIX = "mmproj-"  # a Qwen3-VL GGUF artifact's vision projector: mmproj-<alias>-F16.gguf
REPORT_FILE = "quantization_report.json"  # what quantize measured, beside every artifact it writes
HEADER_LIMIT = 100 * 2**20  # a safetensors JSON header larger than this is corrupt


# ---------------------------------------------------------------- config.json

def read_config(folder: str | Path) -> dict:
    """config.json as a dict; a missing or broken file is one UserError line."""
    p = Path(folder) / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} has no config.json", "pass a model folder, an alias or a Hub id") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({str(e).splitlines()[0]})",
                        "re-create the artifact (`python -m quantize ...`) or fix the file") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{p} is not a JSON object", "re-create the artifact or fix the file")
    return cfg


def read_report(folder: str | Path) -> dict:
    """quantization_report.json (written by quantize), or {} where there is none or it is unreadable."""
    try:
        rep = json.loads((Path(folder) / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return rep if isinstance(rep, dict) else {}


# ---------------------------------------------------------------- safetensors

def safetensors_header(path: str | Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets; "__metadata__")."""
    problem = safetensors_problem(path)
    if problem:
        raise UserError(f"weights file {path} is {problem}",
                        "re-create the artifact (`python -m quantize ...`) or copy the model again")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def safetensors_problem(path: str | Path) -> str | None:
    """Why a safetensors file cannot be loaded (header and size only; no tensor is read), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, HEADER_LIMIT):
                return f"truncated or corrupt (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except (ValueError, UnicodeDecodeError):
        return "corrupt (its header is not valid JSON)"
    if not isinstance(header, dict):
        return "corrupt (bad header)"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "corrupt (bad tensor offsets)"
    if 8 + n + end > size:
        return f"truncated ({size} of {8 + n + end} bytes)"
    return None


def tensors(folder: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of a folder's *.safetensors: name -> (shape, safetensors dtype), from the headers only."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        for k, t in safetensors_header(f).items():
            if k != "__metadata__":
                out[k] = (tuple(t["shape"]), t["dtype"])
    return out


# ---------------------------------------------------------------- GGUF

def gguf_file(location: str | Path) -> Path | None:
    """The language model's .gguf: the file itself, or the largest non-projector .gguf of a folder."""
    p = Path(location)
    if p.is_file():
        return p if p.suffix == ".gguf" and not p.name.startswith(MMPROJ_PREFIX) else None
    files = sorted((f for f in p.glob("*.gguf") if not f.name.startswith(MMPROJ_PREFIX)),
                   key=lambda f: f.stat().st_size, reverse=True) if p.is_dir() else []
    return files[0] if files else None


def mmproj_file(location: str | Path) -> Path | None:
    """The vision projector (`mmproj-*.gguf`) of a VL artifact folder, or beside a .gguf file; None for text."""
    p = Path(location)
    if p.is_file():
        p = p.parent
    files = sorted(p.glob(MMPROJ_PREFIX + "*.gguf")) if p.is_dir() else []
    return files[0] if files else None


def is_gguf(location: str | Path | None) -> bool:
    return location is not None and gguf_file(location) is not None


# ---------------------------------------------------------------- what a folder holds

@dataclass(frozen=True)
class Artifact:
    folder: Path
    format: str  # core.catalog.FORMATS name: bf16, autoround, gptq, awq, compressed-tensors, gguf
    modality: str  # "text" | "vl"
    architecture: str | None
    quant_method: str | None
    bits: int | None
    group_size: int | None
    files: tuple[str, ...]
    weight_bytes: int  # safetensors, or GGUF + projector
    gguf: Path | None = None
    mmproj: Path | None = None
    config: dict = field(default_factory=dict, repr=False)
    max_model_len: int | None = None  # from quantization_report.json


def inspect(folder: str | Path) -> Artifact:
    """What an artifact folder holds; UserError when it is not a model folder."""
    from core.catalog import format_of_quant_method

    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"{folder} is not a folder", "pass an artifact folder or an alias")
    g, m = gguf_file(p), mmproj_file(p)
    cfg = read_config(p) if (p / "config.json").is_file() or g is None else {}
    qc = cfg.get("quantization_config") or {}
    method = qc.get("quant_method")
    files = tuple(sorted(f.name for f in p.iterdir() if f.is_file()))
    if g is not None:
        fmt, nbytes = "gguf", g.stat().st_size + (m.stat().st_size if m else 0)
    else:
        fmt = format_of_quant_method(method)
        nbytes = sum(f.stat().st_size for f in p.glob("*.safetensors"))
    vl = "vision_config" in cfg or m is not None
    rep = read_report(p)
    return Artifact(p, fmt, "vl" if vl else "text", (cfg.get("architectures") or [None])[0], method,
                    qc.get("bits"), qc.get("group_size"), files, nbytes, g, m, cfg,
                    int(rep.get("max_model_len") or 0) or None)


# ---------------------------------------------------------------- writing

@contextmanager
def atomic_folder(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Write a folder in a temp sibling (same filesystem) and move it to `dest` only when the block ends without
    an exception; removed otherwise. `replace`: an existing `dest` is swapped out (removed once the new one is
    in place)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            if not replace:
                raise FileExistsError(dest)
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
