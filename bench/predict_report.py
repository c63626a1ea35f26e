"""`python -m bench --predict`: a bench report of predicted decode speed on a GPU class, nothing started; and
`python -m bench --predict --table`, the README's "Which GPU, how many" table. The plans are serve --plan's
(serve/fit.gpu_plan: layout, context, kernel), the speeds bench/predict.py's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import tempfile
import time
from pathlib import Path

from bench.predict import ANCHORS, NOTES, bytes_per_token, predict
from core import catalog, gpus
from core.errors import UserError
from core.hardware import Gpu, Hardware

SEED_MODELS = ("text-fp16", "text-gptq", "text-awq", "vl-fp16", "vl-gptq", "vl-awq")  # the README table's
CARD_COUNTS = (1, 2, 4, 8)  # the table looks for the fewest cards that fit, in these steps


def plan(alias: str, gpu_list: list[Gpu], nodes: int = 1, **kw):
    """serve --plan's GPU plan of `alias` (its config from the artifact or core/shapes.py) on these GPUs."""
    from serve import fit

    s = fit.subject(alias)
    weights = fit.header_weights(s.folder) if s.folder is not None else None
    return s, fit.gpu_plan(s, _hardware(gpu_list), gpu_list, nodes=nodes, weights=weights, **kw)


def _w4(s) -> bool:
    from serve.fit import is_w4a16

    return is_w4a16(s.fmt)


def _hardware(gpu_list: list[Gpu]) -> Hardware:
    from core.hardware import detect

    return dataclasses.replace(detect(), gpus=tuple(gpu_list))


def speed(s, p) -> dict | None:
    """Predicted decode of plan `p` (of subject `s`) on its GPU class and layout."""
    return predict(bytes_per_token(p.weights_by_group, s.cfg), p.gpu_device, _w4(s), p.parallel.tp)


# ---------------------------------------------------------------- the README table

def fewest_cards(alias: str, c: gpus.GpuClass):
    """(subject, plan) with the fewest cards of class `c` (CARD_COUNTS) that hold `alias` at its default context;
    the one-card plan when none does."""
    first = None
    for n in CARD_COUNTS:
        s, p = plan(alias, [c.gpu] * n)
        first = first or (s, p)
        if p.status == "fits":
            return s, p
    return first


def _cell(p) -> str:
    if p.status == "no":
        return "does not fit"
    n = p.parallel.shards
    where = "1 card" if n == 1 else f"{n} cards, TP={p.parallel.tp}"
    ctx = f"{p.max_context // 1024}K" if p.max_context >= 1024 else str(p.max_context)
    return f"{where}, {ctx}" + (" (short)" if p.status == "short" else "")


def table(models: tuple[str, ...] = SEED_MODELS) -> list[str]:
    """Markdown: per GPU class and family, where each variant fits (fewest cards, longest context per sequence at
    serve --plan's defaults), the W4 kernel and predicted batch-1 decode tok/s, 16-bit vs W4 (GPTQ)."""
    fams: dict[str, list[str]] = {}
    for m in models:
        fams.setdefault(catalog.variant(m).family.name, []).append(m)
    head = ["GPU", "model"] + [f"{catalog.variant(m).format.name}: cards, context" for m in next(iter(fams.values()))]
    head += ["W4 kernel", "predicted tok/s 16-bit", "predicted tok/s W4", "W4 / 16-bit"]
    rows = []
    with _published_only():
        for c in gpus.CLASSES:
            rows += _table_rows(c, fams)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


@contextlib.contextmanager
def _published_only():
    """Plans from the catalog's published configs, whatever this machine has built (an empty artifact root)."""
    old = os.environ.get("QWEN_W4_HOME")
    with tempfile.TemporaryDirectory() as empty:
        os.environ["QWEN_W4_HOME"] = empty
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("QWEN_W4_HOME", None)
            else:
                os.environ["QWEN_W4_HOME"] = old


def _table_rows(c: gpus.GpuClass, fams: dict[str, list[str]]) -> list[list[str]]:
    """One row per model family on class `c`: each variant's fewest cards and context, the W4 kernel, speeds."""
    rows = []
    for fam, members in fams.items():
        plans = [fewest_cards(m, c) for m in members]
        base = next(((s, p) for s, p in plans if not _w4(s)), None)
        w4 = next(((s, p) for s, p in plans if _w4(s)), None)
        sb = speed(*base) if base and base[1].status != "no" else None
        sw = speed(*w4) if w4 and w4[1].status != "no" else None
        gpu = f"{c.label} ({c.vendor_gb} GB, SM {c.capability[0]}.{c.capability[1]}, {c.bandwidth_gb_s:,.0f} GB/s)"
        rows.append([gpu, catalog.FAMILIES[fam].base_hub_id.split("/")[1],
                     *[_cell(p) for _, p in plans],
                     f"{w4[1].gpu.kernel or 'none'} ({w4[1].gpu.dtype})" if w4 else "–",
                     f"{sb['tok_s']:,.0f}" if sb else "–", f"{sw['tok_s']:,.0f}" if sw else "–",
                     f"{sw['tok_s'] / sb['tok_s']:.2f}x" if sb and sw else "–"])
    return rows


# ---------------------------------------------------------------- python -m bench --predict

def report(models: list[str], spec: str, command: str, nodes: int = 1) -> dict:
    """A bench report (bench/report.py's layout) of predictions only: one variant per model, status "predicted",
    its plan on these GPUs and `predicted` (predict's dict); nothing is started."""
    t0 = time.monotonic()
    gpu_list = gpus.parse(spec)
    c = gpus.class_of(gpu_list[0])
    if c is None:
        raise UserError(f"no bandwidth is known for GPU '{gpu_list[0].name}'",
                        f"--predict needs a GPU class: --gpu one of {gpus.names()}")
    variants = []
    for m in models:
        s, p = plan(m, gpu_list, nodes)
        pr = speed(s, p) if p.status != "no" else None
        variants.append({
            "alias": m, "status": "predicted", "reason": None if pr else f"does not fit: {p.parallel.why[0]}",
            "format": s.fmt, "is_16bit": not _w4(s), "modality": "vl" if "vision_config" in s.cfg
            else "text", "location": s.location, "source": s.cfg_source,
            "disk": {"weights_bytes": p.weights.bytes},
            "weights": {"bytes_per_token": bytes_per_token(p.weights_by_group, s.cfg),
                        "bytes_by_group": p.weights_by_group, "source": p.weights.source},
            "engine": {"engine": "vllm", "server": "vllm (not started)", "argv": p.vllm_argv},
            "plan": {"status": p.status, "max_context": p.max_context, "layout": p.parallel.label(),
                     "why": list(p.parallel.why), "command": p.command, "kernel": p.gpu.kernel,
                     "dtype": p.gpu.dtype},
            "predicted": pr, "runs": {}, "answers": []})
    hw = _hardware(gpu_list).as_dict()
    return {"schema": 1, "kind": "predict", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": time.monotonic() - t0,
            "settings": {"engine": "vllm", "models": models, "concurrency": [1], "gpu": spec, "nodes": nodes},
            "environment": {"hardware": hw, "command": command, "versions": {}},
            "bandwidth": {"device": "cuda", "gb_s": c.bandwidth_gb_s, "by_threads": {},
                          "tool": f"vendor spec of {c.label} (core/gpus.py)"},
            "prediction": {"anchors": {k: {**dataclasses.asdict(a), "efficiency": a.efficiency}
                                       for k, a in ANCHORS.items()}, "source": NOTES,
                           "ignores": "all-reduce cost under tensor parallel, attention over long contexts"},
            "variants": variants}


def main(args, argv: list[str]) -> int:
    from bench.report import headline_table, write

    if args.table:
        print("\n".join(table()))
        return 0
    if not args.gpu:
        raise UserError("--predict needs --gpu", f"e.g. --predict --gpu l40s --models vl-fp16,vl-gptq ({gpus.names()})")
    if not args.models:
        raise UserError("no models given", "pass --models ALIAS[,ALIAS...] (see `python -m serve --list`)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = Path(args.out) if args.out else Path("reports") / f"predict-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists", "pass another --out, or --overwrite")
    rep = report(models, args.gpu, "python -m bench " + " ".join(argv), nodes=args.nodes)
    write(rep, out, overwrite=args.overwrite)
    print("\n".join(headline_table(rep)))
    print(f"report: {out}/report.md (predicted, nothing was run)")
    return 0
