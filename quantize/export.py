"""Running AutoRound and turning its output into complete artifact folders, staged and placed atomically.

- `Staging`: a temp folder next to the destination (same filesystem: `os.replace` is atomic there). Everything is
  written inside it, AutoRound's work space included; it is removed on any failure or Ctrl-C. Existing artifacts are
  replaced only at the very end, one rename each, with Ctrl-C held off for those few milliseconds. (One folder to one
  place is core.artifact.atomic_folder; Staging does more: several folders placed together, AutoRound's scratch
  beside them, stale staging folders of killed runs removed by pid, Ctrl-C held while placing.)
- `run_autoround`: one tuning, every requested format exported from it.
- `complete`: copies what AutoRound leaves out (processor/preprocessor configs, chat template, generation config...)
  from the base, and stores 16-bit tensors that AutoRound wrote as float32 in the base's 16-bit dtype.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from core import artifact
from core.errors import UserError
from core.formats import FORMATS, for_quant_method, format_of_quant_method

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

STAGE_PREFIX = ".quantize-"
SIDE_FILE_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
NOT_COPIED = {"config.json", "model.safetensors.index.json", "quantization_config.json", "tiny_model.json",
              "README.md", "quantization_report.json"}


def log(msg: str) -> None:
    print(f"[quantize] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- staging

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path) -> None:
    """Remove staging folders left by runs that were killed hard (SIGKILL, power loss)."""
    if not parent.is_dir():
        return
    for d in parent.glob(STAGE_PREFIX + "*"):
        try:
            pid = int(d.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if d.is_dir() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


class Staging:
    """`with Staging(parent, tag) as st:` -> st.path exists; removed on exit unless everything was placed."""

    def __init__(self, parent: Path, tag: str):
        self.parent = Path(parent)
        self.tag = tag
        self.path: Path | None = None

    def __enter__(self) -> Self:
        self.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.parent)
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{self.tag}-{os.getpid()}-", dir=self.parent))
        return self

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def place(self, folders: dict[str, Path], dests: dict[str, Path]) -> None:
        """Move each finished folder to its destination, replacing what is there, with Ctrl-C held off."""
        with hold_sigint():
            for key, src in folders.items():
                dst = dests[key]
                old = None
                if dst.exists():
                    old = self.path / f"old-{dst.name}"
                    os.replace(dst, old)
                os.replace(src, dst)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def hold_sigint():
    """Defer Ctrl-C (SIGINT) until the block ends."""
    got = []
    try:
        prev = signal.signal(signal.SIGINT, lambda *a: got.append(a))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)
        if got:
            raise KeyboardInterrupt


# ---------------------------------------------------------------- AutoRound

# Several formats from one AutoRound run are packed from the whole model held in RAM: measured 20.4 GB peak RSS for
# the 8.05 GB Qwen3-4B shape with autoround,gptq,awq on a CPU (2.5x its 16-bit bytes; one format at a time stays near
# the size of one block, its layers written as they are done)
PACK_TOGETHER_RAM_X = 2.6
RUNS_PER_FORMAT_ENV = "QWEN_W4_RUNS_PER_FORMAT"  # 1: one AutoRound run per format always, 0: never (default: by RAM)


def runs_per_format(base_bytes: int, formats: list[str], available_bytes: float) -> bool:
    """One AutoRound run per format when packing them together would not fit in the available RAM
    (RUNS_PER_FORMAT_ENV=1/0 decides instead)."""
    forced = os.environ.get(RUNS_PER_FORMAT_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return len(formats) > 1 and PACK_TOGETHER_RAM_X * base_bytes > available_bytes


def run_autoround(model: str, kwargs: dict, formats: list[str], out_dir: Path, work_space: Path,
                  on_loaded=None, per_format: bool = False) -> tuple[dict[str, Path], dict]:
    """Tune once, export every format; or, `per_format`, one run per format (the same settings and seed: RTN is
    deterministic, and verify's cross-format check holds tuned runs to agree). Returns ({format: folder},
    timings). `on_loaded(ar)` runs before the first tuning."""
    os.environ["AR_WORK_SPACE"] = str(work_space)  # AutoRound's scratch folder (default: ./ar_work_space)
    work_space.mkdir(parents=True, exist_ok=True)
    from auto_round import AutoRound

    groups = [[f] for f in formats] if per_format else [list(formats)]
    found: dict[str, Path] = {}
    t_load = t_tune = 0.0
    with no_model_code():
        for i, group in enumerate(groups):
            t0 = time.time()
            ar = AutoRound(model, **kwargs)
            t_load += time.time() - t0
            if on_loaded is not None and i == 0:
                on_loaded(ar)
            t1 = time.time()
            dest = out_dir / group[0] if per_format else out_dir
            ar.quantize_and_save(str(dest), format=",".join(FORMATS[f].autoround_format for f in group))
            t_tune += time.time() - t1
            del ar
            gc.collect()
            found.update({f: d for f, d in find_exports(dest).items() if f in group})
    missing = [f for f in formats if f not in found]
    if missing:
        raise RuntimeError(f"AutoRound wrote no {', '.join(missing)} export under {out_dir}")
    return {f: found[f] for f in formats}, {"load_s": round(t_load, 1), "tune_and_export_s": round(t_tune, 1),
                                            "runs": len(groups)}


@contextmanager
def no_model_code():
    """Python code shipped with a model (config.json `auto_map`) is never imported while AutoRound runs. Passing
    trust_remote_code=False is not enough: AutoRound 0.16.1 probes configs with its own default of True
    (e.g. auto_round.utils.model.is_diffusion_model). Qwen3 / Qwen3-VL are built into transformers."""
    import transformers.dynamic_module_utils as dmu

    orig = dmu.get_class_from_dynamic_module

    def refuse(class_reference, pretrained_model_name_or_path, *args, **kwargs):
        raise ValueError(f"not importing {class_reference} from {pretrained_model_name_or_path}: "
                         "code shipped with a model is never run")

    patched = [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("transformers")
               and getattr(m, "get_class_from_dynamic_module", None) is orig]
    for m in patched:
        m.get_class_from_dynamic_module = refuse
    try:
        yield
    finally:
        for m in list(sys.modules.values()):  # also modules imported meanwhile, which took the refusal
            if getattr(m, "__name__", "").startswith("transformers") and \
                    getattr(m, "get_class_from_dynamic_module", None) is refuse:
                m.get_class_from_dynamic_module = orig


def find_exports(root: Path) -> dict[str, Path]:
    """{format: folder} for every export AutoRound wrote under root (found by their quantization_config)."""
    out = {}
    for cfg in sorted(Path(root).rglob("config.json")):
        try:
            method = artifact.quantization_config(artifact.read_config(cfg.parent)).get("quant_method")
        except UserError:
            continue
        fmt = format_of_quant_method(method) if method else None
        if fmt in FORMATS and fmt not in out:
            out[fmt] = cfg.parent
    return out


# ---------------------------------------------------------------- completing a folder

def complete(folder: Path, base_dir: Path | None, base_dtype: str = "bfloat16") -> list[str]:
    """Make an export self-contained. Returns what was changed (for the log)."""
    changed = []
    if base_dir is not None:
        for f in sorted(Path(base_dir).iterdir()):
            if f.is_file() and f.suffix in SIDE_FILE_SUFFIXES and f.name not in NOT_COPIED \
                    and not (folder / f.name).exists():
                shutil.copy2(f, folder / f.name)
                changed.append(f"copied {f.name}")
    changed += float32_to_16bit(folder, base_dtype)
    for f in [folder, *folder.rglob("*")]:
        f.chmod(0o755 if f.is_dir() else 0o644)
    return changed


def annotate_module_lists(folder: Path, block_prefix: str, linear_names: list[str]) -> list[str]:
    """Complete AutoRound's quantization_config (config.json and quantization_config.json) with the format's
    `complete_config` rule (core/formats; GPTQ: name the 4-bit modules, which AutoRound's GPTQ export leaves out).
    Formats without one are left alone."""
    changed = []
    for name in ("config.json", "quantization_config.json"):
        p = folder / name
        if not p.is_file():
            continue
        cfg = artifact.read_config(folder) if name == "config.json" else json.loads(p.read_text())
        qc = cfg.get("quantization_config", cfg) if name == "config.json" else cfg
        rule = for_quant_method(qc.get("quant_method")).complete_config
        if rule is None:
            return []
        what = rule(qc, block_prefix, linear_names)
        p.write_text(json.dumps(cfg, indent=2, sort_keys=name == "config.json") + "\n")
        changed = [what]
    return changed


def float32_to_16bit(folder: Path, base_dtype: str) -> list[str]:
    """AutoRound keeps the model in float32 while tuning on CPUs without bf16 and saves its 16-bit tensors so;
    store them in the base's dtype again (halves the size; the values came from a bf16 checkpoint)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(base_dtype, torch.bfloat16)
    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        if not any(t.get("dtype") == "F32" for k, t in artifact.safetensors_header(f).items() if k != "__metadata__"):
            continue  # the header says so: no tensor read
        with safe_open(str(f), "pt") as sf:
            meta = sf.metadata() or {}
            tensors = {}
            for k in sf.keys():  # noqa: SIM118 - safe_open is not a dict: keys() is its API
                t = sf.get_tensor(k)
                if t.dtype == torch.float32:
                    t = t.to(target)
                    n += 1
                tensors[k] = t.contiguous()
        tmp = f.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={**meta, "format": "pt"})
        os.replace(tmp, f)
    if n:
        cfg = artifact.read_config(folder)
        _set_dtype(cfg, base_dtype)
        (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return [f"stored {n} float32 tensors as {base_dtype}"]
    return []


def _set_dtype(cfg: dict, dtype: str) -> None:
    for d in (cfg, cfg.get("text_config"), cfg.get("vision_config")):
        if isinstance(d, dict):
            d["dtype"] = dtype
            d.pop("torch_dtype", None)


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in Path(folder).glob(pattern))
