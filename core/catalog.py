"""The catalog of model variants: aliases as data, resolved to a local artifact or a Hub id.

A *family* is one 16-bit base model; a *variant* is that base in one checkpoint format.
Variant aliases are `<family>-<format suffix>` (the base keeps its own alias), e.g.
`vl-fp16` -> `vl-gptq`, `tiny-vl` -> `tiny-vl-awq`. Published Hub ids are data below; a
variant without one exists only once `python -m quantize` has written it locally.

Local artifacts live in `<artifact root>/<alias>/`; the root is `$QWEN_W4_HOME/artifacts`
(default: `artifacts/` in a source checkout, else `~/.cache/qwen-w4/artifacts`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.formats import (  # noqa: F401 - the format registry, re-exported: catalog.FORMATS is its usual name
    FORMATS,
    QUANT_FORMATS,
    Format,
    format_named,
    format_of_quant_method,
)

TEXT_ARCH = "Qwen3ForCausalLM"
VL_ARCH = "Qwen3VLForConditionalGeneration"


@dataclass(frozen=True)
class Family:
    """One 16-bit base model and its published quantized variants."""

    name: str
    base_alias: str
    modality: str  # "text" or "vl"
    architecture: str
    base_hub_id: str | None  # None: built locally (tiny / benchmark models)
    published: dict[str, str] = field(default_factory=dict)  # format -> Hub id
    max_model_len: int = 8192  # what serve asks vLLM for by default
    note: str = ""

    @property
    def local_only(self) -> bool:
        return self.base_hub_id is None


_SEED = "Vishva007"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "text", "text-fp16", "text", TEXT_ARCH, "Qwen/Qwen3-4B-Instruct-2507",
            {"autoround": f"{_SEED}/Qwen3-4B-Instruct-2507-W4A16-AutoRound",
             "awq": f"{_SEED}/Qwen3-4B-Instruct-2507-W4A16-AutoRound-AWQ"},
            note="Qwen3 4B instruct",
        ),
        Family(
            "vl", "vl-fp16", "vl", VL_ARCH, "Qwen/Qwen3-VL-8B-Instruct",
            {"autoround": f"{_SEED}/Qwen3-VL-8B-Instruct-W4A16-AutoRound",
             "awq": f"{_SEED}/Qwen3-VL-8B-Instruct-W4A16-AutoRound-AWQ",
             "gptq": f"{_SEED}/Qwen3-VL-8B-Instruct-W4A16-AutoRound-GPTQ"},
            note="Qwen3-VL 8B instruct (GGUF: language model + 16-bit mmproj projector for llama.cpp)",
        ),
        Family("tiny-text", "tiny-text", "text", TEXT_ARCH, None, max_model_len=2048,
               note="tiny local Qwen3 (random init, briefly trained)"),
        Family("tiny-vl", "tiny-vl", "vl", VL_ARCH, None, max_model_len=2048,
               note="tiny local Qwen3-VL (random weights)"),
        Family("bench-text", "bench-text", "text", TEXT_ARCH, None, max_model_len=2048,
               note="memory-bound benchmark model (Qwen3-0.6B shape, random weights)"),
        # the seed's models at their real shapes (core/shapes.py), random weights, written shard by shard
        Family("shape-text", "shape-text", "text", TEXT_ARCH, None, max_model_len=4096,
               note="Qwen3-4B-Instruct-2507 shape, random weights (8.0 GB bf16)"),
        Family("shape-vl", "shape-vl", "vl", VL_ARCH, None, max_model_len=4096,
               note="Qwen3-VL-8B-Instruct shape, random weights (17.5 GB bf16)"),
    )
}


@dataclass(frozen=True)
class Variant:
    alias: str
    family: Family
    format: Format

    @property
    def hub_id(self) -> str | None:
        if self.format.suffix is None:
            return self.family.base_hub_id
        return self.family.published.get(self.format.name)

    @property
    def base(self) -> Variant:
        return variant(self.family.base_alias)

    @property
    def modality(self) -> str:
        return self.family.modality

    @property
    def is_quantized(self) -> bool:
        return self.format.suffix is not None


def _all_variants() -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for fam in FAMILIES.values():
        out[fam.base_alias] = Variant(fam.base_alias, fam, FORMATS["bf16"])
        for fmt in FORMATS.values():
            if fmt.suffix:
                alias = f"{fam.name}-{fmt.suffix}"
                out[alias] = Variant(alias, fam, fmt)
    return out


VARIANTS: dict[str, Variant] = _all_variants()


def variant(alias: str) -> Variant:
    try:
        return VARIANTS[alias]
    except KeyError:
        raise UserError(
            f"unknown model alias '{alias}'",
            "run `python -m serve --list` to see the aliases, or pass a model folder or Hub id",
        ) from None


def quantized_alias(base_alias: str, fmt: str) -> str:
    """The alias of `base_alias` exported in format `fmt` (e.g. vl-fp16 + gptq -> vl-gptq)."""
    fam = variant(base_alias).family
    return f"{fam.name}-{FORMATS[fmt].suffix}"


# ---------------------------------------------------------------- artifact root

def home() -> Path:
    env = os.environ.get("QWEN_W4_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and os.access(checkout, os.W_OK):
        return checkout
    return Path.home() / ".cache" / "qwen-w4"


def artifact_root() -> Path:
    return home() / "artifacts"


def local_path(alias: str) -> Path | None:
    p = artifact_root() / alias
    return p if (p / "config.json").is_file() else None


# ---------------------------------------------------------------- resolution

@dataclass(frozen=True)
class Resolved:
    """What a user's `--model` value names."""

    name: str  # what the user typed
    source: str  # "local" (artifact or path) or "hub"
    location: str  # folder path or Hub id
    variant: Variant | None  # catalog entry, if the name is an alias

    @property
    def path(self) -> Path | None:
        return Path(self.location) if self.source == "local" else None

    @property
    def served_name(self) -> str:
        if self.variant:
            return self.variant.alias
        return Path(self.location).name if self.source == "local" else self.location


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve(name: str, build_tiny: bool = True) -> Resolved:
    """Alias -> local artifact if present, else Hub id; a folder path or Hub id passes through.

    Tiny base models are built on first use (seconds, offline). Raises UserError with a next step.
    """
    if name in VARIANTS:
        v = VARIANTS[name]
        p = local_path(name)
        if p is None and build_tiny and v.family.local_only and not v.is_quantized:
            from core import tiny

            p = tiny.ensure(name, artifact_root())
        if p is not None:
            return Resolved(name, "local", str(p), v)
        if v.hub_id:
            return Resolved(name, "hub", v.hub_id, v)
        base = v.family.base_alias
        raise UserError(
            f"'{name}' has no local artifact and is not published on the Hub",
            f"make it with `python -m quantize --model {base} --formats {v.format.name}`",
        )
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise UserError(f"'{name}' is not a model folder (no config.json in it)",
                            "pass a folder holding config.json and safetensors weights, or an alias")
        return Resolved(name, "local", str(p.resolve()), _alias_of_path(p))
    if looks_like_hub_id(name):
        return Resolved(name, "hub", name, None)
    if "/" in name or name.startswith((".", "~")):
        raise UserError(f"no such model folder: {name}", "check the path, or use an alias from `python -m serve --list`")
    variant(name)  # raises the unknown-alias error
    raise AssertionError("unreachable")


def _alias_of_path(p: Path) -> Variant | None:
    p = p.resolve()
    if p.parent == artifact_root().resolve():
        return VARIANTS.get(p.name)
    return None


def family_of(v: Variant | None, location: str | None = None) -> Family | None:
    """The model family of a variant; for a model folder outside the catalog, the family of the base its
    quantization_report.json names (by alias or Hub id), so `--models some/dir/tiny-vl-gptq` compares with tiny-vl."""
    if v is not None:
        return v.family
    if location:
        from core.artifact import read_report

        base = (read_report(location).get("base") or {}).get("id")
        for fam in FAMILIES.values():
            if base and base in (fam.base_alias, fam.base_hub_id):
                return fam
    return None


def table() -> list[dict]:
    """Every variant with where it would come from now (for `--list`)."""
    rows = []
    for alias, v in VARIANTS.items():
        lp = local_path(alias)
        rows.append({
            "alias": alias,
            "modality": v.modality,
            "format": v.format.name,
            "base": v.family.base_alias,
            "hub_id": v.hub_id or "",
            "local": str(lp) if lp else "",
            "source": "local" if lp else ("hub" if v.hub_id else
                                          ("build" if v.family.local_only and not v.is_quantized else "quantize")),
        })
    return rows
