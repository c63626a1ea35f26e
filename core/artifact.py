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
from core.formats import for_quant_method

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
    bad = next((k for k, t in header.items() if k != "__metadata__"
                and not (isinstance(t.get("dtype"), str) and isinstance(t.get("shape"), list))), None)
    if bad is not None:
        return f"corrupt (tensor {bad} has no dtype or shape)"
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
    """What an artifact folder (or a bare .gguf file) holds, read from its files without loading any weight."""

    folder: Path  # the folder (a bare .gguf: the folder it lies in)
    format: str  # core.catalog.FORMATS name: bf16, autoround, gptq, awq, compressed-tensors, gguf
    modality: str  # "text" | "vl"
    architecture: str | None
    quant_method: str | None  # as config.json spells it (None: 16-bit or GGUF)
    bits: int | None
    group_size: int | None
    sym: bool | None
    files: tuple[str, ...]  # file names in the folder (a bare .gguf: that file, and its projector if beside it)
    weight_bytes: int  # safetensors, or GGUF + projector
    gguf: Path | None = None
    mmproj: Path | None = None
    config: dict | None = field(default=None, repr=False)  # config.json ({} in a GGUF folder without one; None
    #                                                         for a bare .gguf file)
    max_model_len: int | None = None  # from quantization_report.json


def max_image_pixels(folder: str | Path) -> int | None:
    """The most pixels the model's image processor gives one picture (Qwen-VL's `max_pixels`, or `size.longest_edge`
    in transformers 5's spelling), from the folder's preprocessor/processor config; None where it says nothing."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            d = json.loads((Path(folder) / name).read_text())
        except (OSError, ValueError):
            continue
        d = d.get("image_processor", d) if isinstance(d, dict) else {}
        size = d.get("size") or {}
        mp = d.get("max_pixels") or (size.get("longest_edge") if isinstance(size, dict) else None)
        if isinstance(mp, int):
            return mp
    return None


def quantization_config(cfg: dict) -> dict:
    """A config's quantization_config (top level, or a VL config's text_config), {} for a 16-bit model."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    qc = cfg.get("quantization_config") or text.get("quantization_config") or {}
    return qc if isinstance(qc, dict) else {}


def inspect(location: str | Path) -> Artifact:
    """What an artifact folder (or a bare .gguf file) holds; UserError when it is not a model."""
    p = Path(location)
    if p.is_file():
        g = gguf_file(p)
        if g is None:
            raise UserError(f"{location} is not a model (a file that is not a .gguf)",
                            "pass an artifact folder, a .gguf file or an alias")
        m = mmproj_file(p)
        return Artifact(p.parent, "gguf", "vl" if m else "text", None, None, None, None, None,
                        tuple(f.name for f in (g, m) if f), g.stat().st_size + (m.stat().st_size if m else 0),
                        g, m, None, None)
    if not p.is_dir():
        raise UserError(f"no such model folder: {location}", "check the path, or pass an alias")
    g, m = gguf_file(p), mmproj_file(p)
    weights = sorted(p.glob("*.safetensors"))
    if g is None and not (p / "config.json").is_file():
        raise UserError(f"{location} is not a model folder (no config.json or .gguf in it)",
                        "pass a folder holding config.json and safetensors weights (or a .gguf), or an alias")
    cfg = read_config(p) if (p / "config.json").is_file() else {}
    qc = quantization_config(cfg)
    method = qc.get("quant_method")
    bits, group, sym = for_quant_method(method).scheme(qc)  # the format's reading (core/formats)
    if g is not None:
        fmt, nbytes = "gguf", g.stat().st_size + (m.stat().st_size if m else 0)
    else:
        fmt, nbytes = for_quant_method(method).name, sum(f.stat().st_size for f in weights)
    archs = cfg.get("architectures") or [None]
    vl = "vision_config" in cfg or m is not None
    return Artifact(p, fmt, "vl" if vl else "text", archs[0], method, bits, group, sym,
                    tuple(sorted(f.name for f in p.iterdir() if f.is_file())), nbytes, g, m, cfg,
                    int(read_report(p).get("max_model_len") or 0) or None)


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
            shutil.rmtree(old, ignore_errors=True)  # left by a run killed in this very step
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
