"""What one quantize run was asked to do: `QuantizeOptions`, parsed and checked once (from the command line or from
`quantize.api.quantize(model, formats, recipe, **overrides)`), then read by every step (safetensors formats and
GGUF alike). Nothing here touches the model: a bad option fails before anything is loaded."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from core import catalog
from core.errors import UserError
from quantize import recipes
from quantize.recipes import Recipe

DEFAULT_FORMATS = ("autoround", "gptq", "awq")
GGUF_TYPES = ("q4_k_m", "q4_0", "bf16")
DEFAULT_GGUF_TYPE = "q4_k_m"
# `quantize(...)` keyword -> what it sets (the CLI flags spell them with dashes)
KEYWORDS = (*recipes.OVERRIDABLE, "dataset", "output", "overwrite", "device", "device_map", "verify", "verify_served",
            "push_to_hub",
            "debug", "command", "gguf_type", "asym", "bits", "group_size", "scheme")


def parse_formats(formats) -> list[str]:
    """`--formats` (a comma-separated string or a list, any spelling the format registry knows) -> our names."""
    if isinstance(formats, str):
        formats = formats.split(",")
    out = []
    for name in formats:
        if not name.strip():
            continue
        f = catalog.format_named(name)  # the registry knows every spelling (auto_round, ct, llm-compressor ...)
        if f not in catalog.QUANT_FORMATS:
            shown = f or name.strip().lower().replace("_", "-")
            raise UserError(f"unknown format '{shown}'", f"use one or more of: {','.join(catalog.QUANT_FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise UserError("no format given", f"use --formats with one or more of: {','.join(catalog.QUANT_FORMATS)}")
    return out


def parse_gguf_type(t: str | None) -> str:
    t = (t or DEFAULT_GGUF_TYPE).strip().lower().replace("-", "_")
    t = {"gguf:q4_k_m": "q4_k_m", "gguf:q4_0": "q4_0", "q4_k": "q4_k_m", "f16": "bf16", "16bit": "bf16"}.get(t, t)
    if t not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type '{t}'", f"use --gguf-type with one of: {', '.join(GGUF_TYPES)}")
    return t


@dataclass(frozen=True)
class QuantizeOptions:
    """One run's settings, checked. `formats` keeps the order asked for; `gguf` may be among them."""

    model: str  # alias, folder or Hub id of the 16-bit base
    formats: tuple[str, ...]
    recipe: Recipe  # the named recipe with the overrides (iters, nsamples, seqlen, batch_size, lr) applied
    gguf_type: str = DEFAULT_GGUF_TYPE  # the `gguf` format's type: q4_k_m, q4_0 or bf16
    dataset: str | None = None  # a local calibration file (None: local corpus for tiny models, else AutoRound's)
    output: Path | None = None  # parent folder of the artifacts (None: the artifact root)
    overwrite: bool = False
    device: str = "auto"  # cpu, cuda or auto (resolved when the run starts)
    device_map: str | None = None  # AutoRound's, passed through
    verify: bool = True
    verify_served: bool = False  # also serve base and exports and score them through the endpoint (quantize/served_check)
    push_to_hub: str | None = None  # org/name (several formats: org/name-<FORMAT>)
    debug: bool = False
    command: str = field(default="", compare=False)  # the command line, for the model card

    @property
    def safetensors_formats(self) -> list[str]:
        """The formats AutoRound exports (config.json + safetensors); GGUF has its own pipeline (quantize/gguf.py)."""
        return [f for f in self.formats if catalog.FORMATS[f].container == "safetensors"]

    @property
    def has_gguf(self) -> bool:
        return "gguf" in self.formats

    @property
    def dest_parent(self) -> Path:
        return self.output if self.output is not None else catalog.artifact_root()

    @classmethod
    def from_call(cls, model: str, formats=DEFAULT_FORMATS, recipe: str | Recipe = "default",
                  **overrides) -> QuantizeOptions:
        """The keyword form (`quantize.api.quantize`): see KEYWORDS; asym / bits / group_size / scheme are refused
        unless they say W4 symmetric group 128."""
        unknown = sorted(set(overrides) - set(KEYWORDS))
        if unknown:
            raise UserError(f"unknown option(s): {', '.join(unknown)}", "see `python -m quantize --help`")
        ov = dict(overrides)
        fmts = parse_formats(formats)
        recipes.check_scheme(bits=ov.pop("bits", None), group_size=ov.pop("group_size", None),
                             sym=(False if ov.pop("asym", False) else None), scheme=ov.pop("scheme", None))
        rec = recipes.get(recipe, **{k: ov.pop(k, None) for k in recipes.OVERRIDABLE})
        gguf_type = parse_gguf_type(ov.pop("gguf_type", None))
        dataset = ov.pop("dataset", None)
        if dataset is not None and not Path(dataset).expanduser().is_file():
            raise UserError(f"calibration dataset not found: {dataset}", "pass a local .txt, .jsonl or .json file")
        push = ov.pop("push_to_hub", None)
        if push and "gguf" in fmts:
            raise UserError("--push-to-hub is not supported for GGUF artifacts yet",
                            "push the folder afterwards with `hf upload ORG/NAME <folder>`")
        output = ov.pop("output", None)
        command = ov.pop("command", None) or _command(model, fmts, recipe, overrides)
        return cls(model=str(model), formats=tuple(fmts), recipe=rec, gguf_type=gguf_type, dataset=dataset,
                   output=Path(output).expanduser().resolve() if output else None,
                   overwrite=bool(ov.pop("overwrite", False)), device=ov.pop("device", None) or "auto",
                   device_map=ov.pop("device_map", None), verify=bool(ov.pop("verify", True)),
                   verify_served=bool(ov.pop("verify_served", False)), push_to_hub=push,
                   debug=bool(ov.pop("debug", False)), command=command)

    @classmethod
    def from_args(cls, args, command: str) -> QuantizeOptions:
        """The command-line form: `args` from quantize/__main__.py's parser."""
        return cls.from_call(
            args.model, args.formats, args.recipe, iters=args.iters, nsamples=args.nsamples, seqlen=args.seqlen,
            batch_size=args.batch_size, lr=args.lr, dataset=args.dataset, output=args.output,
            overwrite=args.overwrite, device=args.device, device_map=args.device_map, verify=args.verify,
            verify_served=args.verify_served,
            push_to_hub=args.push_to_hub, asym=args.asym, bits=args.bits, group_size=args.group_size,
            scheme=args.scheme, debug=args.debug, gguf_type=args.gguf_type, command=command)


def _command(model, formats: list[str], recipe, overrides: dict) -> str:
    """The command line that would repeat a keyword call (for the model card)."""
    parts = ["python", "-m", "quantize", "--model", str(model), "--formats", ",".join(formats),
             "--recipe", recipe if isinstance(recipe, str) else recipe.name]
    for k, v in overrides.items():
        if v is None or v is False or k == "command":
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)
