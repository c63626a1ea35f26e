"""The checkpoint formats (the format registry). A format is one module here that builds `FORMAT = Format(...)`
(core/formats/base.py: its names, and its rules as data and small functions); adding one is that module plus one
line in REGISTRY. Then lint, verify, export and the model card (quantize), serve's arguments and `--plan`, and bench
reach its rules through `FORMATS[name]` / `for_quant_method(method)`.

Names: our name for each format and every other spelling of it that a reader or a user meets (AutoRound's
`format=`, config.json's `quant_method`, the alias suffix, vLLM's method name, `--formats` spellings). core.catalog
re-exports FORMATS and the lookups; the registry lives apart so that core.artifact, which reads formats, imports
nothing that builds models (core.catalog builds tiny models on first use, and core.tiny writes with core.artifact).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence

from core.formats.base import Format

# our format name -> the module that defines it (its FORMAT); the order is the order formats are listed in
REGISTRY: dict[str, str] = {
    "bf16": "core.formats.bf16",
    "autoround": "core.formats.autoround",
    "gptq": "core.formats.gptq",
    "awq": "core.formats.awq",
    "compressed-tensors": "core.formats.compressed_tensors",
    "gguf": "core.formats.gguf",
}


class _Formats(Mapping):
    """REGISTRY read live: name -> Format (modules imported on first use)."""

    def __getitem__(self, name: str) -> Format:
        return importlib.import_module(REGISTRY[name]).FORMAT

    def __iter__(self) -> Iterator[str]:
        return iter(list(REGISTRY))

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return f"FORMATS({', '.join(REGISTRY)})"


class _QuantFormats(Sequence):
    """The names of the quantized formats (those with an alias suffix), in registry order, read live."""

    def _names(self) -> list[str]:
        return [n for n, f in FORMATS.items() if f.suffix]

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


FORMATS: Mapping[str, Format] = _Formats()
QUANT_FORMATS: Sequence[str] = _QuantFormats()


def _norm(s: str) -> str:
    return s.strip().lower().replace("_", "-")


def format_named(name: str) -> str | None:
    """Our format name for a user's spelling (`auto_round`, `ct`, `GPTQ` ...), or None when it names none."""
    n = _norm(name)
    for f in FORMATS.values():
        if n == f.name or n in f.spellings:
            return f.name
    return None


def for_quant_method(method: str | None) -> Format:
    """The format a config's `quantization_config.quant_method` names (None: the 16-bit base). A method no format
    has gets a Format of its own (lower-cased) name with the default rules."""
    m = _norm(method or "")
    for f in FORMATS.values():
        if f.quant_method and (m == f.quant_method or m in f.quant_methods):
            return f
    return FORMATS["bf16"] if not m else Format(m, m, None, m, None)


def format_of_quant_method(method: str | None) -> str:
    """Our format name for a config's `quantization_config.quant_method` (None: the 16-bit base; a method no
    format has comes back as given, lower-cased)."""
    return for_quant_method(method).name
