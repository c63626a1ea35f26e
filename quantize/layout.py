"""Which modules become 4-bit and which stay 16-bit, with bytes: printed before tuning, put in the card, and
checked against every export by lint.

Rule (W4A16 for Qwen3 / Qwen3-VL): every Linear inside the language model's decoder layers is 4-bit; embeddings,
norms, lm_head, and for VL the whole vision tower (patch embed, blocks, merger, deepstack mergers) stay 16-bit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from core import artifact
from core.catalog import TEXT_ARCH, VL_ARCH
from core.errors import UserError
from quantize.recipes import GROUP_SIZE

SUPPORTED = {TEXT_ARCH: "text", VL_ARCH: "vl"}
# decoder layers of the language model, as HF names them in checkpoints
BLOCK_PREFIX = {"text": "model.layers", "vl": "model.language_model.layers"}


@dataclass
class Entry:
    name: str  # module name (a Linear) or parameter name (everything else)
    kind: str  # "linear4" or "16bit"
    shape: tuple[int, ...]
    params: int

    @property
    def bytes16(self) -> int:
        return self.params * 2

    @property
    def bytes_w4(self) -> int:
        """Bytes once packed: int4 weights + fp16 scales + packed int4 zero points, one per group of 128."""
        if self.kind != "linear4":
            return self.bytes16
        out_f, in_f = self.shape
        groups = max(1, in_f // GROUP_SIZE)
        return out_f * in_f // 2 + groups * out_f * 2 + groups * out_f // 2


@dataclass
class Layout:
    architecture: str
    modality: str
    block_prefix: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def quantized(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "linear4"]

    @property
    def kept(self) -> list[Entry]:
        return [e for e in self.entries if e.kind != "linear4"]

    def totals(self) -> dict:
        q, k = self.quantized, self.kept
        b16 = sum(e.bytes16 for e in self.entries)
        bw4 = sum(e.bytes_w4 for e in self.entries)
        return {
            "linears_4bit": len(q),
            "params_4bit": sum(e.params for e in q),
            "params_16bit": sum(e.params for e in k),
            "bytes_bf16": b16,
            "bytes_w4a16": bw4,
            "ratio": round(bw4 / b16, 3) if b16 else None,
        }

    def groups(self) -> list[dict]:
        """Entries summarised by pattern (layer numbers replaced by *): one row per pattern."""
        rows: dict[tuple[str, str], dict] = {}
        for e in self.entries:
            pat = re.sub(r"\.\d+\.", ".*.", e.name)
            pat = re.sub(r"\.\d+$", ".*", pat)
            key = (e.kind, _group_name(pat))
            r = rows.setdefault(key, {"kind": e.kind, "group": key[1], "count": 0, "params": 0,
                                      "bytes_bf16": 0, "bytes_w4a16": 0})
            r["count"] += 1
            r["params"] += e.params
            r["bytes_bf16"] += e.bytes16
            r["bytes_w4a16"] += e.bytes_w4
        return sorted(rows.values(), key=lambda r: (r["kind"] != "linear4", r["group"]))

    def as_dict(self) -> dict:
        return {"architecture": self.architecture, "modality": self.modality, "block_prefix": self.block_prefix,
                "totals": self.totals(), "groups": self.groups(),
                "linears_4bit": [e.name for e in self.quantized]}

    def text(self) -> str:
        t = self.totals()
        lines = [(f"layout ({self.architecture}): {t['linears_4bit']} Linear modules -> 4-bit (sym, group "
                  f"{GROUP_SIZE}); everything else stays 16-bit")]
        lines.append(f"  {'':6} {'modules':<58} {'count':>5} {'params':>12} {'bf16':>11} {'W4A16':>11}")
        for r in self.groups():
            lines.append(f"  {'4-bit' if r['kind'] == 'linear4' else '16-bit':6} {r['group'][:58]:<58} "
                         f"{r['count']:>5} {r['params']:>12,} {_mb(r['bytes_bf16']):>11} {_mb(r['bytes_w4a16']):>11}")
        lines.append(f"  {'total':6} {'':<58} {'':>5} {t['params_4bit'] + t['params_16bit']:>12,} "
                     f"{_mb(t['bytes_bf16']):>11} {_mb(t['bytes_w4a16']):>11}  (x{t['ratio']})")
        return "\n".join(lines)


def _group_name(pattern: str) -> str:
    """Collapse a parameter pattern into a readable module group."""
    for prefix in ("model.visual.", "visual."):
        if pattern.startswith(prefix):
            rest = pattern[len(prefix):]
            head = rest.split(".")[0]
            if head == "blocks":
                return "model.visual.blocks.* (vision tower)"
            if head == "deepstack_merger_list":
                return "model.visual.deepstack_merger_list.* (vision merger)"
            if head == "merger":
                return "model.visual.merger.* (vision merger)"
            return f"model.visual.{head} (vision)"
    if ".layers.*." in pattern and pattern.endswith(("norm.weight", "_norm.weight")):
        return re.sub(r"\.layers\.\*\..*", ".layers.*.*norm (norms)", pattern)
    return pattern


def _mb(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


def modality_of(config: dict) -> tuple[str, str]:
    """(architecture, modality) of a config.json dict; unsupported architectures are a user error."""
    archs = config.get("architectures") or []
    for a in archs:
        if a in SUPPORTED:
            return a, SUPPORTED[a]
    raise UserError(f"unsupported architecture {', '.join(archs) or '(none in config.json)'}",
                    f"this tool quantizes {TEXT_ARCH} and {VL_ARCH} models")


def from_model(model, architecture: str) -> Layout:
    """Layout of a loaded torch model (what AutoRound loaded)."""
    import torch

    modality = SUPPORTED[architecture]
    prefix = BLOCK_PREFIX[modality]
    lay = Layout(architecture, modality, prefix)
    linear_names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith(prefix + "."):
            w = mod.weight
            lay.entries.append(Entry(name, "linear4", tuple(w.shape), w.numel()))
            linear_names.add(name)
    for name, p in model.named_parameters():
        mod_name = name.rsplit(".", 1)[0]
        if mod_name in linear_names and name.endswith(".weight"):
            continue
        lay.entries.append(Entry(name, "16bit", tuple(p.shape), p.numel()))
    if not lay.quantized:
        raise UserError(f"no Linear modules found under {prefix}", "is this a Qwen3 / Qwen3-VL checkpoint?")
    return lay


def from_safetensors(model_dir: Path, architecture: str) -> Layout:
    """Layout of a 16-bit checkpoint folder from its safetensors headers (no weights loaded)."""
    modality = SUPPORTED[architecture]
    prefix = BLOCK_PREFIX[modality]
    lay = Layout(architecture, modality, prefix)
    for name, shape in tensor_shapes(model_dir).items():
        n = 1
        for s in shape:
            n *= s
        if name.startswith(prefix + ".") and name.endswith(".weight") and len(shape) == 2 and \
                name.rsplit(".", 2)[-2].endswith("proj"):
            lay.entries.append(Entry(name[:-len(".weight")], "linear4", tuple(shape), n))
        else:
            lay.entries.append(Entry(name, "16bit", tuple(shape), n))
    return lay


def tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """name -> shape for every tensor in a folder's safetensors files (headers only: core.artifact)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise UserError(f"no .safetensors weights in {model_dir}", "this tool reads safetensors checkpoints only")
    for f in files:
        problem = artifact.safetensors_problem(f)
        if problem:
            raise UserError(f"cannot read weights {f.name} in {model_dir} ({problem})",
                            "the file is corrupt or truncated: rebuild or re-download the model")
    return {name: shape for name, (shape, _) in artifact.tensors(model_dir).items()}
