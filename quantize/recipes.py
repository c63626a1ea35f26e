"""Recipes as data: one table of AutoRound settings, and the mapping from a recipe plus flags to AutoRound's
keyword arguments. Pure functions (no torch, no AutoRound import): easy to test.

The scheme is fixed: W4A16, symmetric int4 weights, group size 128 (what vLLM's W4A16 kernels and the
published checkpoints use). Asymmetric or other bit widths are refused (see `check_scheme`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from core.errors import UserError
from core.formats.base import BITS, GROUP_SIZE  # the scheme's numbers (core/formats/base.py)

SCHEME = "W4A16"


@dataclass(frozen=True)
class Recipe:
    """AutoRound tuning settings. iters=0 means no sign-gradient tuning (round-to-nearest)."""

    name: str
    iters: int
    nsamples: int
    seqlen: int
    batch_size: int
    lr: float | None = None  # None: AutoRound's default (1/iters)
    disable_opt_rtn: bool = False  # True: plain RTN (no imatrix-weighted rounding search)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# The one table. `best` is the seed notebooks' recipe; `default` is AutoRound's own default; `light` is a quick
# pass (seconds on the tiny models, minutes for an 8B model on a GPU); `rtn` skips tuning altogether.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("best", iters=1000, nsamples=512, seqlen=2048, batch_size=8,
               note="the seed's recipe: highest accuracy, hours for an 8B model on one GPU"),
        Recipe("default", iters=200, nsamples=128, seqlen=2048, batch_size=8,
               note="AutoRound's default settings"),
        Recipe("light", iters=20, nsamples=16, seqlen=256, batch_size=4, lr=5e-3,
               note="quick pass: few iterations and short samples (AutoRound's light learning rate)"),
        Recipe("rtn", iters=0, nsamples=16, seqlen=256, batch_size=4, disable_opt_rtn=True,
               note="plain round-to-nearest, no tuning (baseline)"),
    )
}

OVERRIDABLE = ("iters", "nsamples", "seqlen", "batch_size", "lr")


def get(recipe: str | Recipe, **overrides) -> Recipe:
    """A recipe by name (or as given) with flag overrides applied (None values are ignored)."""
    if isinstance(recipe, Recipe):
        base = recipe
    else:
        try:
            base = RECIPES[recipe]
        except KeyError:
            raise UserError(f"unknown recipe '{recipe}'", f"use one of: {', '.join(RECIPES)}") from None
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - set(OVERRIDABLE)
    if unknown:
        raise UserError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}",
                        f"settable: {', '.join(OVERRIDABLE)}")
    for k in ("nsamples", "seqlen", "batch_size"):
        if k in changes and int(changes[k]) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be at least 1", f"got {changes[k]}")
    if "iters" in changes and int(changes["iters"]) < 0:
        raise UserError("--iters must be 0 (no tuning) or more", f"got {changes['iters']}")
    if not changes:
        return base
    r = replace(base, **changes)
    if changes.get("iters", base.iters) > 0 and r.disable_opt_rtn:
        r = replace(r, disable_opt_rtn=False)
    suffix = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
    return replace(r, name=f"{base.name}({suffix})")


def check_scheme(bits: int | None = None, group_size: int | None = None, sym: bool | None = None,
                 scheme: str | None = None) -> None:
    """Only W4A16 sym g128 is supported: anything else is one clear error."""
    if sym is False:
        raise UserError("asymmetric quantization is not supported",
                        "W4A16 here is symmetric only (vLLM rejects asymmetric GPTQ; AWQ/AutoRound exports of it break)"
                        " — drop --asym")
    if bits is not None and bits != BITS:
        raise UserError(f"{bits}-bit weights are not supported", "this tool makes W4A16 (4-bit) checkpoints only")
    if group_size is not None and group_size != GROUP_SIZE:
        raise UserError(f"group size {group_size} is not supported", f"W4A16 here uses group size {GROUP_SIZE}")
    if scheme is not None and scheme.upper() != SCHEME:
        raise UserError(f"scheme {scheme} is not supported", f"only {SCHEME} (symmetric, group {GROUP_SIZE})")


def resolve_device(device: str, cuda_available: bool) -> str:
    """--device cpu|cuda|auto -> 'cpu' or 'cuda'."""
    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if cuda_available else "cpu"
    if d.startswith("cuda"):
        if not cuda_available:
            raise UserError("--device cuda was asked for but no CUDA GPU is visible",
                            "use --device cpu (or auto), or check `nvidia-smi` and the CUDA build of torch")
        return "cuda"
    if d == "cpu":
        return "cpu"
    raise UserError(f"unknown device '{device}'", "use cpu, cuda or auto (for several GPUs: --device-map 0,1)")


def autoround_kwargs(recipe: Recipe, *, device: str, device_map: str | None = None,
                     dataset=None, low_gpu_mem_usage: bool = False) -> dict:
    """The keyword arguments for `auto_round.AutoRound(model, **kwargs)`.

    `device` is the resolved device ('cpu' or 'cuda'); `device_map` (AutoRound's own spelling, e.g. "0,1,2" or
    "auto") passes through unchanged for multi-GPU tuning. `dataset` None means AutoRound's default dataset.
    """
    kw = {
        "scheme": SCHEME,
        "iters": recipe.iters,
        "nsamples": recipe.nsamples,
        "seqlen": recipe.seqlen,
        "batch_size": recipe.batch_size,
        "device_map": device_map if device_map else ("cpu" if device == "cpu" else 0),
        # torch.compile costs about a minute of compilation per block shape on a CPU and buys nothing there
        "enable_torch_compile": False if device == "cpu" else None,
        "quant_nontext_module": False,  # vision tower and merger stay 16-bit
        "quant_lm_head": False,
        "trust_remote_code": False,  # AutoRound's default is True: never run Python code that came with a model
    }
    if recipe.lr is not None:
        kw["lr"] = recipe.lr
    if recipe.iters == 0 and recipe.disable_opt_rtn:
        kw["disable_opt_rtn"] = True
        kw["disable_model_free"] = True  # one code path (same layer selection) for every recipe
    if dataset is not None:
        kw["dataset"] = dataset
    if low_gpu_mem_usage:
        kw["low_gpu_mem_usage"] = True
    return kw


def table_text() -> str:
    rows = [("recipe", "iters", "nsamples", "seqlen", "batch", "lr", "note")]
    for r in RECIPES.values():
        rows.append((r.name, str(r.iters), str(r.nsamples), str(r.seqlen), str(r.batch_size),
                     "auto" if r.lr is None else f"{r.lr:g}", r.note))
    w = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(row[:6])) + "  " + row[6] for row in rows)
