"""Predicted batch-1 decode speed on a GPU class, before anything runs (`python -m bench --predict` and the README
table: bench/predict_report.py; `serve --plan` prints it too).

predicted tok/s = efficiency x roofline limit, where the limit is bench/roofline.py's (vendor memory bandwidth /
bytes read per decoded token, per GPU: tensor parallel divides the bytes) and the efficiency is a measured anchor:
what a real run reached of the same limit on one GPU, one value for 16-bit weights and one for W4A16 (Marlin-class
fused int4 x 16-bit GEMM kernels). Every such number is labelled "predicted".

Anchors (`ANCHORS`), both measured on a lent H100 (NOTES.md, 2026-12-07, "GPU anchors"; transformers 5.17, torch 2.11 cu130;
the text decoder of the exact Qwen3-VL-8B shape, random weights, 256-token prompt, 128 new tokens, batch 1, the
standard compiled static-cache decode: CUDA graphs, `mode="reduce-overhead"`): bf16 110 tok/s at 15.1 GB read per
token; W4A16 (AutoRound RTN, humming kernels) 179 tok/s at 4.94 GB. Against the H100 SXM's vendor 3,350 GB/s that
is 49.6% and 26.4% of the limit (the notes' 56% is against the 3.0 TB/s copy measured there; a prediction can only
use a class's vendor figure, so the anchor is expressed against the same kind of figure). Chosen over the
CUDA-graph-only 91.6 tok/s (46% of copy) because vLLM decodes with CUDA graphs and torch.compile by default.
The H100 there is taken to be the SXM card: a 3.0 TB/s copy is above the PCIe card's 2.0 TB/s peak.

What the prediction ignores: all-reduce cost under tensor parallel (it divides bytes by TP and nothing else);
that pipeline parallel does not speed up one sequence (its stages run one after another: bytes per token are the
whole replica's / TP); attention over a long context; and that vLLM's Marlin/Machete may reach more of the limit
than humming did (W4's low share is mostly the ~4-5 ms per step of attention, norms and small kernels that 4-bit
weights do not shrink). A measured GPU report keeps `predicted_tok_s` next to its measured bs1 decode tok/s.
Pure: no plan or server here (serve/fit.py calls it).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench import roofline
from core import catalog, gpus
from core.hardware import Gpu


@dataclass(frozen=True)
class Anchor:
    tok_s: float
    bytes_per_token: float
    gpu: str  # core.gpus key
    what: str

    @property
    def efficiency(self) -> float:
        """Share of the vendor-bandwidth roofline that the anchor run reached."""
        return self.tok_s * self.bytes_per_token / (gpus.find(self.gpu).bandwidth_gb_s * 1e9)


NOTES = "NOTES.md 2026-12-07 'GPU anchors' (an H100, transformers + AutoRound's humming kernels)"
ANCHORS = {
    "16-bit": Anchor(110.0, 15.1e9, "h100", "bf16 compiled CUDA-graph decode, Qwen3-VL-8B text shape, batch 1"),
    "w4a16": Anchor(179.0, 4.94e9, "h100", "W4A16 humming kernels, same compiled decode"),
}


def kind_of(w4a16: bool) -> str:
    return "w4a16" if w4a16 else "16-bit"


def bytes_per_token(groups: dict[str, int], cfg: dict) -> int:
    """bench/roofline.py's rule over a plan's weight bytes by part (decoder, norms, LM head; a tied head reads the
    embedding table)."""
    text = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    tied = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return roofline.per_token_bytes({g: groups.get(g, 0) for g in roofline.GROUPS}, tied)


def predict(per_token: int, gpu: Gpu, w4a16: bool, tp: int = 1) -> dict | None:
    """Predicted batch-1 decode of one replica (tok/s) on `gpu`'s class, its weights 4-bit (W4A16) or 16-bit; None
    for a GPU outside core/gpus.py."""
    c = gpus.class_of(gpu)
    if c is None:
        return None
    kind = kind_of(w4a16)
    a = ANCHORS[kind]
    per_gpu = per_token / tp
    limit = roofline.limit_tok_s(per_gpu, c.bandwidth_gb_s)
    return {"label": "predicted", "tok_s": a.efficiency * limit, "limit_tok_s": limit, "efficiency": a.efficiency,
            "kind": kind, "gpu": c.key, "bandwidth_gb_s": c.bandwidth_gb_s, "bytes_per_token": per_token,
            "bytes_per_gpu": per_gpu, "tp": tp,
            "source": (f"predicted: {a.efficiency:.1%} (the {kind} anchor: {a.tok_s:g} tok/s on {gpus.find(a.gpu).label},"
                       f" {NOTES}) x {c.bandwidth_gb_s:,.0f} GB/s ({c.label}, vendor) / "
                       f"{per_gpu / 1e9:.2f} GB per token per GPU"
                       + (f" (TP {tp}; all-reduce cost ignored)" if tp > 1 else ""))}


def line(alias: str, fmt: str, p: dict) -> str:
    return (f"{alias} ({fmt}): {p['bytes_per_gpu'] / 1e9:.2f} GB/token/GPU, limit {p['limit_tok_s']:,.0f}, "
            f"predicted {p['tok_s']:,.0f} tok/s")


def family(alias: str) -> list[str]:
    """The 16-bit base and every vLLM W4A16 variant of a catalog alias's family (the alias itself first)."""
    v = catalog.VARIANTS.get(alias)
    if v is None:
        return [alias]
    fam = [a for a, x in catalog.VARIANTS.items() if x.family is v.family and x.format.engine == "vllm"
           and (x.format.suffix is None or x.format.w4a16)]
    return [alias] + [a for a in fam if a != alias]
