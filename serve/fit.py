"""`python -m serve --plan MODEL`: will it fit here, and with how long a context — before anything is started.

For an alias, model folder or cached Hub id on this machine's hardware (or planned GPUs: `--gpu l40s`, `--gpu 4xl40s`,
`--gpu "NAME, MiB, X.Y"`, core/gpus.py; `--nodes K` machines of them; GPU plans choose tensor / data / pipeline
parallel in serve/parallel.py, print the exact vLLM argv and the predicted decode speed, bench/predict.py):
weight bytes, KV-cache bytes per token, the vision encoder's activation budget for one image at the image-budget
knob `--max-image-pixels`, the engine's own overhead, and the longest context per sequence that fits in the
available RAM (CPU) or in `--gpu-memory-utilization` x VRAM (GPU) for `--concurrency` sequences; the knob mapped to
vLLM's `--mm-processor-kwargs '{"max_pixels": N}'` / `--limit-mm-per-prompt` and to llama.cpp's image-token limit;
and a GPU pre-flight by compute capability (W4A16 kernel: Machete / Marlin / none, bf16 or float16).

Every number says where it came from: `header` (safetensors headers / GGUF tensor table of the artifact), `config`
(config.json, or the published config of core/shapes.py for a catalog model that is not on disk), `measured` (this
project's reports) or `estimate` (a formula, written next to it). Pure functions over (config dict, weight sizes,
Hardware, GPU list); `subject()` and `main()` do the I/O. Nothing is started or built, except a tiny
model (seconds) that a tiny alias names.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core import artifact, catalog, shapes
from core.errors import UserError
from core.formats import FORMATS, Format, format_of_quant_method
from core.formats.base import GROUP_SIZE
from core.hardware import Gpu, Hardware, parse_nvidia_smi  # noqa: F401 - re-exported (fit.parse_nvidia_smi)
from serve.parallel import Layout, per_gpu

GB = 1e9
GIB = 2**30
GROUP = GROUP_SIZE  # W4A16 group size
# Engine overheads (bytes resident beside weights, KV cache and activations)
VLLM_CPU_BASE = 2.3e9  # measured: vLLM CPU process tree 3.22-3.44 GB RSS serving tiny-vl / tiny-text (weights
#                        < 10 MB) with VLLM_CPU_KVCACHE_SPACE=1 GiB (reports/cpu-2026-12-01): ~2.3 GB + the KV space
VLLM_GPU_BASE = 1.0e9  # estimate: CUDA context, cuBLAS/NCCL workspaces and CUDA graphs outside vLLM's torch profile
# At the real 4B shape (reports/cpu-2026-12-04-shapes/text, vLLM 0.32 CPU, 151936-entry vocabulary) the process
# tree held more than tiny models show beside weights and KV space: 1.23 GB more with bf16 weights, which grows with
# the vocabulary (its sampler's fp32 logits buffers for every sequence slot: 8.1 KB per vocabulary entry), and with
# W4 weights another 0.32-0.46x the packed decoder-linear bytes (the CPU int4 kernels' repacked copy of them)
VLLM_CPU_PER_VOCAB = 8100
VLLM_CPU_W4_REPACK_X = 0.4
LLAMACPP_BASE = 0.2e9  # measured: llama.cpp server 0.09-0.18 GB RSS with tiny-vl-gguf (llama-cpp-python's)
LLAMACPP_UBATCH = 512  # llama.cpp's n_ubatch: its compute buffer holds logits for this many tokens (fp32)
GPU_UTIL = 0.90  # vLLM's --gpu-memory-utilization default (serve's too)
CPU_STEP_TOKENS = 2048  # vLLM 0.32 max_num_batched_tokens default, OpenAI server on CPU (engine/arg_utils.py)
LLAMACPP_IMAGE_TOKENS = (8, 4096)  # llama.cpp clip.cpp: set_limit_image_tokens(8, 4096) for Qwen-VL projectors
MIN_CONTEXT = 512  # below this many tokens per sequence a model "does not fit"
# vLLM 0.32's W4A16 kernels for NVIDIA GPUs, in its order (model_executor/kernels/linear/__init__.py, CUDA):
# Machete needs exactly SM 9.0 (mixed_precision/machete.py: is_device_capability(90)); Marlin SM >= 7.5
# (marlin.py get_min_capability 75; marlin_utils: no quant types below 75). Below that vLLM only has its slow
# Exllama (GPTQ, float16) / Triton fallbacks: "none" here. bf16 needs SM >= 8.0 (platforms/cuda.py).
MACHETE_SM = (9, 0)
MARLIN_SM = (7, 5)
BF16_SM = (8, 0)


@dataclass(frozen=True)
class Item:
    """One number of the plan and where it came from."""

    bytes: int
    source: str


@dataclass(frozen=True)
class Preflight:
    """What vLLM can run on one GPU: its W4A16 kernel (None: no Marlin-class kernel) and the activation dtype."""

    gpu: str
    capability: tuple[int, int] | None
    kernel: str | None
    dtype: str
    reason: str


@dataclass(frozen=True)
class Subject:
    """The model a plan is for: its config, format and (when on disk) the artifact folder."""

    name: str
    location: str
    cfg: dict
    cfg_source: str
    fmt: str  # a format name (core/formats), or FORMAT-TYPE for one of its sized types: gguf-bf16, gguf-q4_0
    folder: Path | None = None  # a local folder with weights (sizes from its headers)
    max_model_len: int | None = None  # the catalog's default context
    max_pixels: int | None = None  # the processor's own image budget (pixels)
    max_pixels_source: str = ""
    bf16_alias: str | None = None


@dataclass
class Plan:
    model: str
    fmt: str
    engine: str  # vllm | llamacpp
    device: str  # cpu | cuda
    weights: Item
    weights_by_group: dict[str, int]
    kv_per_token: Item
    overhead: Item
    activations: Item  # LM prefill step + logits
    budget: Item  # RAM available / VRAM x utilization
    concurrency: int
    requested_context: int
    context_limit: int  # max_position_embeddings
    max_context: int  # longest context per sequence that fits (0: none)
    status: str  # fits | short | no
    predicted: Item  # resident bytes at the requested context (what bench measures)
    image: dict | None = None  # max_pixels, tokens, activations (Item), knob mappings
    kv_cache_gib: int | None = None  # vLLM CPU: the VLLM_CPU_KVCACHE_SPACE serve sets for the requested context
    command: str = ""
    gpu: Preflight | None = None
    notes: list[str] = field(default_factory=list)
    # GPU plans (gpu_plan): the layout over GPUs and machines, the fullest GPU's share, what vLLM gets, speed
    parallel: Layout | None = None
    per_gpu: tuple[int, int] = (0, 0)  # weight bytes, KV-cache bytes per token on the fullest GPU
    gpu_device: Gpu | None = None
    vllm_argv: list[str] = field(default_factory=list)
    speeds: list[str] = field(default_factory=list)  # predicted decode of the family on this class and layout


# ---------------------------------------------------------------- GPU pre-flight (pure)

def gpu_preflight(gpu: Gpu) -> Preflight:
    cap = gpu.capability
    if cap is None:
        return Preflight(gpu.name, None, None, "bfloat16",
                         "compute capability unknown (nvidia-smi lacks compute_cap): kernel not checked")
    sm = f"SM {cap[0]}.{cap[1]}"
    dtype = "bfloat16" if cap >= BF16_SM else "float16"
    if cap[0] == MACHETE_SM[0]:
        return Preflight(gpu.name, cap, "Machete", dtype, f"{sm}: vLLM picks Machete (Hopper), Marlin as fallback")
    if cap >= MARLIN_SM:
        why = f"{sm}: vLLM picks Marlin"
        if dtype == "float16":
            why += "; no bf16 below SM 8.0, so activations run in float16"
        return Preflight(gpu.name, cap, "Marlin", dtype, why)
    return Preflight(gpu.name, cap, None, dtype, f"{sm}: below Marlin's SM 7.5; no bf16 (float16)")


def preflight_refusal(pf: Preflight, model: str, bf16_alias: str | None) -> UserError | None:
    """The one-line refusal of a W4A16 checkpoint on a GPU without Marlin/Machete (None: it runs)."""
    if pf.kernel is not None or pf.capability is None:
        return None
    sm = f"{pf.capability[0]}.{pf.capability[1]}"
    base = f"serve {bf16_alias} in float16" if bf16_alias else "serve the 16-bit model in float16"
    return UserError(f"GPU '{pf.gpu}' (SM {sm}) has no W4A16 kernel for '{model}': vLLM's Marlin needs SM 7.5, "
                     "Machete SM 9.0",
                     f"{base} (--dtype float16 after --), use a GPU of SM >= 7.5 (T4, A10, L4, A100, H100), or a GGUF "
                     "on llama.cpp (CPU)")


# ---------------------------------------------------------------- sizes (pure)

def _text(cfg: dict) -> dict:
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def kv_bytes_per_token(cfg: dict) -> int:
    """bf16/f16 K and V of every layer for one token (vLLM's and llama.cpp's default cache dtype): serve's rule."""
    from serve.args import kv_bytes_per_token

    return kv_bytes_per_token(_text(cfg)) or 0


def format_of(fmt: str) -> tuple[Format | None, str | None]:
    """(the format, its sized type) a plan's format names: `gptq` -> (gptq, None), `gguf-q4_0` -> (gguf, "q4_0")."""
    if fmt in FORMATS:
        return FORMATS[fmt], None
    name, _, kind = fmt.rpartition("-")
    if name in FORMATS and kind in FORMATS[name].bits_per_weight:
        return FORMATS[name], kind
    return None, None


def is_w4a16(fmt: str) -> bool:
    f = format_of(fmt)[0]
    return f is not None and f.w4a16


def estimate_weights(cfg: dict, fmt: str) -> tuple[dict[str, int], str]:
    """Bytes by group (decoder_linear, embedding, lm_head, vision, other) for a config dict in a format, and how.
    The format says which rule: the 16-bit base, W4A16 (int4 + fp16 scales + its `weight_extras`: zero points,
    g_idx) or measured `bits_per_weight` (GGUF)."""
    pc = shapes.param_counts(cfg)
    lin = pc["decoder_linear"]
    g = {"embedding": pc["embedding"] * 2, "lm_head": pc["lm_head"] * 2, "vision": pc["vision"] * 2,
         "other": pc["other"] * 2}
    f, kind = format_of(fmt)
    if f is not None and f.suffix is None:  # the 16-bit base
        g["decoder_linear"] = lin * 2
        how = f"{pc['total'] / 1e9:.2f}e9 params x 2 B ({f.name})"
    elif f is not None and f.w4a16:
        extras = f.weight_extras(lin, _text(cfg))
        g["decoder_linear"] = lin // 2 + lin // GROUP * 2 + sum(extras.values())
        how = (f"W4A16 g{GROUP}: {lin / 1e9:.2f}e9 decoder-linear params x 0.52 B (int4 + fp16 scales"
               f"{''.join(f' + {k}' for k in extras)}); embeddings, lm_head, vision tower and norms 16-bit "
               "(AutoRound keeps them; checked: bench-text GPTQ/AWQ headers match to the byte)")
    elif f is not None and f.bits_per_weight:
        kind = kind or next(iter(f.bits_per_weight))
        bpw = f.bits_per_weight[kind]
        for k in ("decoder_linear", "embedding", "lm_head", "other"):
            g[k] = int((lin if k == "decoder_linear" else pc[k]) * bpw / 8)
        how = (f"{f.name.upper()} {kind.upper()}: {bpw} bits/weight (measured on bench-text); vision tower as a "
               "16-bit mmproj")
    else:
        known = [n for n, x in FORMATS.items() if x.suffix is None or x.w4a16 or x.bits_per_weight]
        raise UserError(f"no size estimate for format '{fmt}'", f"use one of {', '.join(known)}")
    return g, how


def vision_budget(vc: dict, max_pixels: int) -> tuple[int, int, str]:
    """(LM tokens per image, activation bytes to encode one image, formula) at an image budget of `max_pixels`.

    Estimate: the processor resizes to at most max_pixels in blocks of (patch x merge)^2 pixels; N = 4 x tokens
    patches. Live at once: pixel_values (N x 3*2*16*16 fp32), one vision block (residual, norm, qkv, attention out:
    6 x hidden, and the MLP's two intermediate tensors, bf16; attention fused (SDPA/flash), no N x N matrix) and the
    merger + deepstack outputs kept for the LM (tokens x LM width x (1 + deepstack layers), bf16)."""
    p, m = int(vc["patch_size"]), int(vc.get("spatial_merge_size", 2))
    f = p * m
    tokens = max(1, max_pixels // (f * f))
    n = tokens * m * m
    h, i = int(vc["hidden_size"]), int(vc["intermediate_size"])
    pix = n * int(vc.get("in_channels", 3)) * int(vc.get("temporal_patch_size", 2)) * p * p * 4
    block = n * (6 * h + 2 * i) * 2
    outs = tokens * int(vc["out_hidden_size"]) * 2 * (1 + len(vc.get("deepstack_visual_indexes") or []))
    how = (f"estimate: {n} patches: pixels {_gb(pix)} + one block {_gb(block)} + merger/deepstack outputs "
           f"{_gb(outs)} (fused attention)")
    return tokens, pix + block + outs, how


def prefill_bytes(cfg: dict, tokens: int, logits_rows: int) -> int:
    """Estimate of one prefill step's live activations: `tokens` x (residual, norm, q/k/v, attention out, gate, up,
    act: one layer at a time, bf16) + fp32 logits of `logits_rows` positions."""
    t = _text(cfg)
    h, i = int(t["hidden_size"]), int(t["intermediate_size"])
    heads = int(t["num_attention_heads"])
    hd = int(t.get("head_dim") or h // heads)
    kv = int(t.get("num_key_value_heads") or heads)
    per = (3 * h + heads * hd + 2 * kv * hd + 3 * i) * 2
    return tokens * per + logits_rows * int(t["vocab_size"]) * 4


def image_knob(max_pixels: int, images: int, patch: int = 16, merge: int = 2) -> dict:
    """`--max-image-pixels N` for each engine: vLLM flags, and what llama.cpp 0.3.36's server can and cannot do."""
    f = patch * merge
    tokens = max(1, max_pixels // (f * f))
    kwargs = json.dumps({"max_pixels": max_pixels}, separators=(",", ":"))
    limit = json.dumps({"image": images, "video": 0}, separators=(",", ":"))
    lo, hi = LLAMACPP_IMAGE_TOKENS
    return {
        "max_pixels": max_pixels, "tokens_per_image": tokens, "images_per_prompt": images,
        "vllm": ["--mm-processor-kwargs", kwargs, "--limit-mm-per-prompt", limit],
        "llamacpp": (f"image_max_tokens {min(max(tokens, lo), hi)} (serve sets it from the processor's budget; "
                     f"clip.cpp's Qwen-VL range is {lo}..{hi} tokens): the server resizes larger pictures itself"),
    }


# ---------------------------------------------------------------- the plan (pure)

def make_plan(s: Subject, hw: Hardware, *, weights: tuple[dict[str, int], str] | None = None,
              gpus: list[Gpu] | None = None, device: str = "auto", concurrency: int = 4,
              max_model_len: int | None = None, max_pixels: int | None = None, images: int = 2,
              gpu_util: float = GPU_UTIL, kv_cache_gib: int | None = None, layout: Layout | None = None) -> Plan:
    """The plan for `s` on `hw`. `weights`: (bytes by group, source) from the artifact's headers; None: estimated
    from the config and format. `gpus`: the GPUs with capabilities (default: hw.gpus, capability unknown).
    `kv_cache_gib`: vLLM CPU's KV space as a server was (or will be) started with (None: what the context needs).
    `layout`: GPU: tensor / pipeline parallel of one replica (serve/parallel.py; None: one GPU)."""
    if concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    cfg, text = s.cfg, _text(s.cfg)
    f = format_of(s.fmt)[0]
    engine = f.engine if f is not None else "vllm"
    gpus = gpus if gpus is not None else list(hw.gpus)
    on_gpu = engine == "vllm" and device != "cpu" and bool(gpus)
    if weights is None:
        groups, how = estimate_weights(cfg, s.fmt)
        wsource = f"estimate from {s.cfg_source}: {how}"
    else:
        groups, wsource = weights
    w = Item(sum(groups.values()), wsource)
    kv = Item(kv_bytes_per_token(cfg), f"config: {text['num_hidden_layers']} layers x "
              f"{text.get('num_key_value_heads')} kv heads x {text.get('head_dim')} x 2 (K, V) x 2 B")
    limit = int(text.get("max_position_embeddings") or 0) or 10**9
    requested = max_model_len or s.max_model_len or min(limit, 8192)
    notes: list[str] = []

    image = None
    vision_act = 0
    img_tokens = 0
    vc = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else None
    if vc:
        mp = max_pixels or s.max_pixels or shapes.QWEN3_VL_IMAGE_PIXELS["max_pixels"]
        src = "--max-image-pixels" if max_pixels else (s.max_pixels_source or "Qwen3-VL preprocessor default")
        f2 = (int(vc["patch_size"]) * int(vc.get("spatial_merge_size", 2))) ** 2
        enc = min(mp, LLAMACPP_IMAGE_TOKENS[1] * f2) if engine == "llamacpp" else mp  # clip.cpp's token cap
        img_tokens, vision_act, vhow = vision_budget(vc, enc)
        image = {**image_knob(mp, images, int(vc["patch_size"]), int(vc.get("spatial_merge_size", 2))),
                 "source": src, "activations": Item(vision_act, vhow), "engine_tokens": img_tokens}
        if img_tokens * images > requested:
            notes.append(f"{images} images at {mp} pixels take {img_tokens * images} tokens, more than the "
                         f"{requested}-token context: lower --max-image-pixels")

    gpu_pf = None
    dev_w, dev_kv = w.bytes, kv.bytes  # on the fullest device
    if on_gpu:
        g = gpus[0]
        gpu_pf = gpu_preflight(g)
        budget = Item(int(g.memory_gib * GIB * gpu_util), f"{g.name}: {g.memory_gib:g} GiB x "
                      f"--gpu-memory-utilization {gpu_util:g}")
        overhead = Item(int(VLLM_GPU_BASE), "estimate: CUDA context, workspaces, CUDA graphs")
        big = g.memory_gib * GIB >= 70 * GIB and "a100" not in g.name.lower()
        step = 16384 if g.memory_gib * GIB >= 160 * GIB else (8192 if big else 2048)
        seqs = 1024 if big else 256
        act = prefill_bytes(cfg, max(step, img_tokens), seqs)
        acts = Item(act, f"estimate: vLLM's profile step of {max(step, img_tokens)} tokens (one layer live) + "
                    f"logits of {seqs} sequences")
        layout = layout or Layout(gpus=len(gpus))
        dev_w, dev_kv = per_gpu(groups, cfg, layout.tp, layout.pp)
    else:
        if engine == "vllm":
            vocab = int(text.get("vocab_size") or 0)
            repack = int(VLLM_CPU_W4_REPACK_X * groups.get("decoder_linear", 0)) if is_w4a16(s.fmt) else 0
            overhead = Item(int(VLLM_CPU_BASE) + vocab * VLLM_CPU_PER_VOCAB + repack,
                            f"measured: vLLM CPU process tree RSS minus weights and KV space, 2.3 GB (tiny models, "
                            f"reports/cpu-2026-12-01) + {VLLM_CPU_PER_VOCAB} B x {vocab} vocabulary entries (sampler)"
                            + (f" + {VLLM_CPU_W4_REPACK_X:g} x the 4-bit decoder linears (int4 kernel repack)"
                               if repack else "") + " (4B shape, reports/cpu-2026-12-04-shapes)")
            step = max(CPU_STEP_TOKENS, img_tokens)
            act = prefill_bytes(cfg, min(step, max(requested, img_tokens)), concurrency)
            acts = Item(act, f"estimate: one prefill step of {min(step, max(requested, img_tokens))} tokens "
                        "(one layer live) + logits")
        else:
            from core.formats import gguf as gguf_format

            kind = format_of(s.fmt)[1] or next(iter(gguf_format.REPACKED_SHARE))
            share = gguf_format.REPACKED_SHARE.get(kind, 0.0) if hw.flag("avx2") else 0.0
            repack = int(share * groups.get("decoder_linear", 0))
            overhead = Item(int(LLAMACPP_BASE) + repack,
                            "measured: llama.cpp server RSS with a tiny GGUF (reports/cpu-2026-12-01)"
                            + (f" + its CPU repack of {share:.0%} of the decoder linears ({kind.upper()}, AVX2+; "
                               "4B shape, reports/cpu-2026-12-04-shapes)" if repack else ""))
            act = prefill_bytes(cfg, LLAMACPP_UBATCH, LLAMACPP_UBATCH)
            acts = Item(act, f"estimate: compute buffer for n_ubatch {LLAMACPP_UBATCH} tokens (logits fp32)")
            # llama.cpp's server: one slot per concurrent sequence, each with its own KV cache of the context
        budget = Item(int(hw.mem_available_gib * GIB), f"/proc/meminfo MemAvailable ({hw.mem_available_gib:g} of "
                      f"{hw.mem_total_gib:g} GiB)")
        if device == "cuda" and engine == "llamacpp":
            notes.append("this project's llama.cpp build runs on the CPU: planned in RAM")
        if engine == "vllm" and is_w4a16(s.fmt) and not hw.w4a16_serving[0]:
            notes.append("serve refuses W4A16 here: " + hw.w4a16_serving[1])

    free = budget.bytes - dev_w - overhead.bytes - vision_act - acts.bytes
    cpu_vllm = engine == "vllm" and not on_gpu
    kv_room = (max(0, free) // GIB) * GIB if cpu_vllm else max(0, free)  # vLLM CPU: KV space in whole GiB
    max_ctx = min(kv_room // (dev_kv * concurrency), limit) if dev_kv else 0
    status = "no" if max_ctx < MIN_CONTEXT else ("fits" if max_ctx >= requested else "short")
    ctx = min(requested, max_ctx) if max_ctx >= MIN_CONTEXT else requested  # what the command asks for

    kv_gib = None
    flag = ""
    if on_gpu:
        predicted = Item(budget.bytes, "vLLM sizes its KV cache so that the whole process uses "
                         "--gpu-memory-utilization x VRAM")
    elif cpu_vllm:
        from serve.args import ModelInfo, kv_cache_gib as serve_default_kv_gib

        info = ModelInfo(location=s.location, served_name=s.name, kv_bytes_per_token=kv.bytes)
        default = serve_default_kv_gib(info, hw, ctx)  # what serve sets without --kv-cache-gib (room for 4 sequences)
        kv_gib = kv_cache_gib or max(1, min(math.ceil(kv.bytes * ctx * concurrency / GIB), kv_room // GIB or 1))
        if kv_gib != default and not kv_cache_gib and status != "no":
            flag = f" --kv-cache-gib {kv_gib}"
            notes.append(f"serve's default KV space for this context would be {default} GiB (at most a quarter of "
                         f"free RAM): --kv-cache-gib {kv_gib} holds {ctx} tokens x {concurrency} sequences")
        predicted = Item(w.bytes + overhead.bytes + kv_gib * GIB + acts.bytes + vision_act,
                         f"weights + overhead + VLLM_CPU_KVCACHE_SPACE {kv_gib} GiB + activations")
    else:
        predicted = Item(w.bytes + overhead.bytes + kv.bytes * ctx * concurrency + acts.bytes + vision_act,
                         f"weights + overhead + KV for {concurrency} slots x {ctx} tokens + compute buffer")

    cmd = f"python -m serve --model {s.name} --max-model-len {ctx}{flag}"
    if on_gpu:
        cmd += "".join(f" {a}" for a in layout.serve_flags())
    if engine == "llamacpp":
        cmd += f" --parallel {concurrency}"  # llama.cpp's slots, each with this context
    if image and max_pixels:
        cmd += " -- " + " ".join(_q(a) for a in image["vllm"][:2])
        if images != 2:
            cmd += " " + " ".join(_q(a) for a in image["vllm"][2:])
    if on_gpu and gpu_pf and gpu_pf.dtype == "float16":
        cmd += (" --" if " -- " not in cmd else "") + " --dtype float16"
    return Plan(s.name, s.fmt, engine, "cuda" if on_gpu else "cpu", w, groups, kv, overhead, acts, budget,
                concurrency, requested, limit, int(max_ctx), status, predicted, image, kv_gib, cmd, gpu_pf, notes,
                layout if on_gpu else None, (int(dev_w), int(dev_kv)), gpus[0] if on_gpu else None)


def _q(a: str) -> str:
    import shlex

    return shlex.quote(a)


# ---------------------------------------------------------------- printing

def _gb(b: float) -> str:
    return f"{b / GB:.2f} GB" if b >= 0.1 * GB else f"{b / 1e6:.1f} MB"


def lines(p: Plan, hw: Hardware, alternative: Plan | None = None) -> list[str]:
    """The plan as text: one number per line with its source. A plan that does not fit ends with its 4-bit
    `alternative` (the plan of `four_bit_alternative`) and that one's command instead of its own."""
    where = (f"GPU {_gpus_of(p)}" if p.gpu else f"CPU {hw.cpu_model}, {hw.cores} cores") + \
        f", {hw.mem_total_gib:g} GiB RAM"
    out = [f"plan: {p.model} ({p.fmt}) on {p.engine} ({p.device}) — {where}"]

    def row(k: str, v: str, src: str = "") -> None:
        out.append(f"  {k:<18} {v:<14} {src}".rstrip())

    row("weights", _gb(p.weights.bytes), p.weights.source)
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in p.weights_by_group.items() if v)
    out.append(f"  {'':<18} {'':<14} by part: {parts}")
    row("KV cache / token", f"{p.kv_per_token.bytes / 1024:.0f} KiB", p.kv_per_token.source)
    if p.image:
        im = p.image
        capped = " (llama.cpp's cap)" if im["engine_tokens"] < im["tokens_per_image"] else ""
        row("image", f"{im['engine_tokens']} tokens", f"max_pixels {im['max_pixels']} ({im['source']}){capped}; "
            f"{im['images_per_prompt']} per prompt")
        row("vision encoder", _gb(im["activations"].bytes), "one image: " + im["activations"].source)
    row("engine overhead", _gb(p.overhead.bytes), p.overhead.source)
    row("activations", _gb(p.activations.bytes), p.activations.source)
    row("budget", _gb(p.budget.bytes), p.budget.source)
    verdict = {"fits": f"fits: {p.requested_context} tokens requested",
               "short": f"fits only a short context (< the {p.requested_context} tokens requested)",
               "no": "does not fit"}[p.status]
    row("longest context", f"{p.max_context} tok", f"per sequence x {p.concurrency} sequences (model limit "
        f"{p.context_limit}) = (budget - weights - overhead - image - activations) / (KV/token x sequences)")
    row("verdict", p.status, verdict)
    row("predicted memory", _gb(p.predicted.bytes), p.predicted.source)
    if p.gpu:
        row("gpu pre-flight", p.gpu.kernel or "none", f"{p.gpu.reason}; dtype {p.gpu.dtype}")
    if p.parallel is not None:
        out += _parallel_rows(p)
    if p.image:
        row("image knob", f"--max-image-pixels {p.image['max_pixels']}", "")
        out.append(f"  {'':<18} vLLM: {' '.join(_q(a) for a in p.image['vllm'])}")
        out.append(f"  {'':<18} llama.cpp: {p.image['llamacpp']}")
    for n in p.notes:
        out.append(f"  note: {n}")
    if p.status != "no":
        out += _commands(p)
    elif alternative is None:
        out.append("  command: none fits here: free memory, or use a machine with more "
                   + ("VRAM" if p.device == "cuda" else "RAM"))
    else:
        a = alternative
        out.append(f"  instead: {a.model} ({a.fmt}) on {a.engine}: {a.status}, longest context {a.max_context} tok, "
                   f"predicted {_gb(a.predicted.bytes)}")
        out += (_commands(a) if a.status != "no" else
                ["  command: none fits here, not even 4-bit: use a machine with more memory"])
    return out


def _gpus_of(p: Plan) -> str:
    n = p.parallel.gpus if p.parallel else 1
    machines = f" on each of {p.parallel.nodes} machines" if p.parallel and p.parallel.nodes > 1 else ""
    return (f"{n} x " if n > 1 else "") + p.gpu.gpu + machines


def _parallel_rows(p: Plan) -> list[str]:
    """A GPU plan's layout and why, the fullest GPU's share, what is short when it does not fit, and the family's
    predicted decode speed on this class."""
    lay, pad = p.parallel, f"  {'':<18} "
    flags = f"vLLM --tensor-parallel-size {lay.tp} --pipeline-parallel-size {lay.pp} --data-parallel-size {lay.dp}"
    out = [f"  {'parallel':<18} {lay.label():<14} {flags}"]
    out += [f"{pad}why: {w}" for w in lay.why]
    w, kv = p.per_gpu
    if lay.shards > 1:
        out.append(f"  {'per GPU':<18} {_gb(w):<14} weights on the fullest GPU (TP {lay.tp} x PP {lay.pp}); KV cache "
                   f"{kv / 1024:.0f} KiB/token")
    if p.status == "no":
        out.append(f"  {'short by':<18} {_gb(_need(p, MIN_CONTEXT) - p.budget.bytes):<14} per GPU, for "
                   f"{MIN_CONTEXT} tokens x {p.concurrency} sequences")
    for i, s in enumerate(p.speeds):
        out.append(f"  {'decode, batch 1':<18} {'predicted':<14} {s}" if i == 0 else pad + s)
    return out


def _need(p: Plan, tokens: int) -> int:
    """Bytes the fullest GPU needs for `tokens` of context per sequence x the plan's sequences."""
    image = p.image["activations"].bytes if p.image else 0
    return p.per_gpu[0] + p.overhead.bytes + p.activations.bytes + image + p.per_gpu[1] * tokens * p.concurrency


def _shortfall(p: Plan) -> str:
    """Why a GPU plan does not hold the requested context (or, when it does not fit at all, even MIN_CONTEXT)."""
    tokens = MIN_CONTEXT if p.status == "no" else p.requested_context
    w, n, g = p.per_gpu[0], p.parallel.shards, p.gpu_device
    kv = p.per_gpu[1] * tokens * p.concurrency
    share = f" ({_gb(p.weights.bytes)} / {n} GPUs)" if n > 1 else ""
    util = p.budget.bytes / (g.memory_gib * GIB)
    return (f"{_gb(w)} weights{share} + {_gb(_need(p, 0) - w)} engine, activations, image + {_gb(kv)} KV for {tokens} "
            f"tok x {p.concurrency} = {_gb(_need(p, tokens))} > {g.memory_gib:g} GiB x {util:.2f} = "
            f"{_gb(p.budget.bytes)} per GPU")


def _commands(p: Plan) -> list[str]:
    """`command:` (the python -m serve line) and, for a GPU plan, the exact vLLM argv serve builds from it; on
    several machines the Ray steps around it."""
    from serve.args import shown_command

    lay = p.parallel
    if lay is not None and lay.pp > 1:
        from serve.parallel import ray_steps

        out = [f"  {s}" for s in ray_steps(p.command, lay.nodes)]
    else:
        out = [f"  command: {p.command}"]
    if p.vllm_argv:
        out.append(f"  vllm argv: {shown_command(p.vllm_argv)}")
    return out


# ---------------------------------------------------------------- I/O: what the model is, which GPUs

def _fmt_of(cfg: dict, folder: Path | None) -> str:
    if folder is not None:
        from core.artifact import gguf_file as find_file
        from core.formats import gguf

        gg = find_file(folder)
        if gg is not None:
            return gguf.plan_name(gg.name)
    return format_of_quant_method(artifact.quantization_config(cfg).get("quant_method"))


def header_weights(folder: Path) -> tuple[dict[str, int], str] | None:
    """Bytes by group from the artifact's safetensors headers or GGUF tensor table (+ the mmproj file)."""
    from bench import roofline
    from core.artifact import mmproj_file as find_mmproj

    try:
        w = roofline.weights(folder)
    except (FileNotFoundError, ValueError):
        return None
    groups = dict(w["bytes_by_group"])
    src = f"header: {w['files']} safetensors file(s)" if "gguf_bytes" not in w else "header: GGUF tensor table"
    mm = find_mmproj(folder)
    if "gguf_bytes" in w and mm is not None:
        groups["vision"] = groups.get("vision", 0) + mm.stat().st_size
        src += f" + {mm.name} (file size)"
    return groups, src


def subject(name: str) -> Subject:
    """Resolve `name` without building a real-shape model or downloading: local artifact, catalog (published config
    from core/shapes.py), folder, or a Hub id whose config.json is in the local Hugging Face cache."""
    from core import tiny
    from core.artifact import read_config
    from serve.args import hub_cached_config

    v = catalog.VARIANTS.get(name)
    if v is not None:
        p = catalog.local_path(name)
        fam = v.family
        shape = shapes.FAMILY_SHAPES.get(fam.name)
        if p is None and shape is None:
            p = Path(catalog.resolve(name).location)  # a tiny model: built in seconds, or a one-line error
        if p is not None:
            return _local(name, p, v)
        hit = hub_cached_config(v.hub_id) if v.hub_id else None
        if hit:
            cfg, src = read_config(Path(hit).parent), f"cached config.json of {v.hub_id}"
        else:
            cfg = shapes.config_dict(shape)
            src = f"the published {shape} config (core/shapes.py)" + (
                f"; {v.hub_id} is not downloaded" if v.hub_id else "; not built yet")
        fmt = v.format.name
        mp = tiny.IMAGE_PIXELS["max_pixels"] if fam.local_only else None
        return Subject(name, v.hub_id or f"(not built) {name}", cfg, src, fmt, None, fam.max_model_len, mp,
                       "the processor core.tiny writes" if mp else "",
                       fam.base_alias if v.is_quantized else None)
    p = Path(name).expanduser()
    if p.exists():
        r = catalog.resolve(name, build_tiny=False)
        return _local(name, Path(r.location), r.variant)
    if catalog.looks_like_hub_id(name):
        hit = hub_cached_config(name)
        if not hit:
            raise UserError(f"the config.json of '{name}' is not in the local Hugging Face cache",
                            f"download it (`huggingface-cli download {name} config.json`) or pass a model folder")
        return _local(name, Path(hit).parent, None, src=f"cached config.json of {name}")
    catalog.resolve(name, build_tiny=False)  # raises the one-line error for a typo / missing folder
    raise AssertionError("unreachable")


def _local(name: str, folder: Path, v, src: str | None = None) -> Subject:
    cfg = artifact.read_config(folder)
    mp = artifact.max_image_pixels(folder)
    return Subject(name, str(folder), cfg, src or f"config.json of {folder}", _fmt_of(cfg, folder), folder,
                   v.family.max_model_len if v else None, mp, "the artifact's preprocessor_config.json" if mp else "",
                   v.family.base_alias if v is not None and v.is_quantized else None)


def four_bit_alternative(name: str, hw: Hardware) -> str | None:
    """The 4-bit variant of catalog model `name`'s family that this machine serves best, as measured
    (README 'Hardware'): GPTQ where vLLM has a fast W4A16 path (a GPU, or a CPU where its CPU build has the W4A8
    kernel: AVX-512 with BF16 and VNNI, or AMX), the GGUF variant on llama.cpp on other CPUs. None for a name outside the catalog, or when `name` is
    that variant already."""
    v = catalog.VARIANTS.get(name)
    if v is None:
        return None
    fast_vllm = hw.has_gpu or (hw.w4a16_serving[0] and hw.w4a8_default)
    fmt = "gptq" if fast_vllm else "gguf"
    if fmt == v.format.name:
        return None
    alias = catalog.quantized_alias(v.family.base_alias, fmt)
    return alias if alias in catalog.VARIANTS else None


# ---------------------------------------------------------------- GPU plans: layout, vLLM's argv, speed

def gpu_plan(s: Subject, hw: Hardware, gpus: list[Gpu], *, nodes: int = 1,
             weights: tuple[dict[str, int], str] | None = None, **kw) -> Plan:
    """The plan of `s` (a vLLM model) on `gpus` (one machine's; `nodes` such machines): serve/parallel.py's
    tensor / data / pipeline parallel choice, the exact vLLM argv serve builds from the printed command, and the
    predicted batch-1 decode speed of the family on this GPU class (bench/predict.py). `kw`: make_plan's."""
    import dataclasses

    from serve import parallel

    if nodes < 1:
        raise UserError(f"--nodes {nodes} must be at least 1")
    hw = dataclasses.replace(hw, gpus=tuple(gpus))

    def at(layout: Layout, subj: Subject = s, w=weights) -> Plan:
        return make_plan(subj, hw, weights=w, gpus=gpus, device="cuda", layout=layout, **kw)

    p, _ = parallel.choose(at, s.cfg, is_w4a16(s.fmt), len(gpus), nodes, explain=_shortfall)
    if p.status != "no":
        try:
            p.vllm_argv = vllm_argv(p, hw, kw.get("gpu_util", GPU_UTIL))
        except UserError as e:  # e.g. a variant that exists once quantized: the plan stands, serve says why not yet
            p.notes.append(f"serve cannot start it here yet: {e.what} ({e.todo})")
    p.speeds = _speeds(s, p, lambda subj, w: at(p.parallel, subj, w))
    return p


def vllm_argv(p: Plan, hw: Hardware, gpu_util: float = GPU_UTIL) -> list[str]:
    """The vLLM argv serve builds for plan `p`'s command on a machine like `hw` (serve.args, as serve's vLLM engine
    calls it on a GPU; `python` as the interpreter): the command's context and the arguments after its `--`, the
    plan's layout. tests/unit/test_gpu_plan_vllm_parser.py parses the command with serve's parser and this argv
    with vLLM's."""
    import shlex

    from serve.args import ServeOptions, model_info, vllm_command

    words = shlex.split(p.command)
    extra = tuple(words[words.index("--") + 1:]) if "--" in words else ()
    lay = p.parallel
    opts = ServeOptions(port=8000, python="python", max_model_len=int(words[words.index("--max-model-len") + 1]),
                        tensor_parallel_size=lay.tp, pipeline_parallel_size=lay.pp, data_parallel_size=lay.dp,
                        distributed_backend="ray" if lay.pp > 1 else None, gpu_memory_utilization=gpu_util,
                        extra_args=extra)
    return vllm_command(model_info(catalog.resolve(p.model)), hw, opts)[0]


def _speeds(s: Subject, p: Plan, plan_of) -> list[str]:
    """Predicted decode lines: the heading, then `s` and its family's 16-bit and W4A16 variants at p's layout."""
    from bench import predict

    lay, out = p.parallel, []
    for alias in predict.family(s.name):
        try:
            sub = s if alias == s.name else subject(alias)
        except UserError:  # a local-only variant that is not built
            continue
        w = header_weights(sub.folder) if sub.folder is not None else None
        groups = w[0] if w else estimate_weights(sub.cfg, sub.fmt)[0]
        pr = predict.predict(predict.bytes_per_token(groups, sub.cfg), p.gpu_device, is_w4a16(sub.fmt), lay.tp)
        if pr is None:
            unknown = (f"no bandwidth known for '{p.gpu_device.name}': plan a class of core/gpus.py (--gpu NAME) "
                       "for predicted tok/s")
            return [unknown]
        fits = plan_of(sub, w).status if sub is not s else p.status
        out.append(predict.line(alias, sub.fmt, pr) + ("" if fits != "no" else f" (does not fit at {lay.label()})"))
    a16, a4 = predict.ANCHORS["16-bit"], predict.ANCHORS["w4a16"]
    head = (f"per replica, at {lay.label()}: {p.gpu_device.name}'s vendor bandwidth / bytes per token per GPU x "
            f"{a16.efficiency:.1%} (16-bit) or {a4.efficiency:.1%} (W4A16), the shares measured on an H100 SXM "
            f"({predict.NOTES}; bench/predict.py)" + ("; all-reduce cost ignored" if lay.tp > 1 else "")
            + ("; pipeline stages run one after another for one sequence" if lay.pp > 1 else ""))
    return [head, *out]


# ---------------------------------------------------------------- command line

def predict(name: str, hw: Hardware, *, concurrency: int, max_model_len: int | None = None,
            kv_cache_gib: int | None = None) -> dict:
    """The plan's resident memory for a server of `name` started with these settings: what bench puts next to the
    RSS it measures (on a GPU: the --gpu-memory-utilization share of VRAM, which vLLM fills)."""
    s = subject(name)
    weights = header_weights(s.folder) if s.folder is not None else None
    p = make_plan(s, hw, weights=weights, concurrency=concurrency, max_model_len=max_model_len,
                  kv_cache_gib=kv_cache_gib)
    return {"predicted_bytes": p.predicted.bytes, "source": p.predicted.source, "weights_bytes": p.weights.bytes,
            "overhead_bytes": p.overhead.bytes, "activations_bytes": p.activations.bytes,
            "vision_bytes": p.image["activations"].bytes if p.image else 0, "kv_cache_gib": p.kv_cache_gib,
            "context": min(p.requested_context, p.max_context) if p.max_context else p.requested_context,
            "max_context": p.max_context,
            "concurrency": p.concurrency, "engine": p.engine, "device": p.device}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve --plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", nargs="?", const="", default="", metavar="MODEL", help="alias, folder or Hub id")
    p.add_argument("--model", default=None, help="the model (instead of --plan MODEL)")
    p.add_argument("--max-model-len", type=int, default=None, help="context wanted (default: the catalog's)")
    p.add_argument("--concurrency", type=int, default=4, help="sequences at full length at once (default 4)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="image budget per image in pixels (default: the model's processor)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="vLLM's --limit-mm-per-prompt image count")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--gpu", default=None, metavar="[Nx]CLASS | \"NAME, MiB, X.Y\"",
                   help="plan for these GPUs: a class of core/gpus.py (l40s, 4xl40s, \"2x RTX 4090\", h100, a100-80g "
                        "...) or nvidia-smi's name,memory.total,compute_cap line, e.g. \"Tesla T4, 15360, 7.5\"")
    p.add_argument("--nodes", type=int, default=1,
                   help="machines with those GPUs each (> 1: pipeline parallel over a Ray cluster where one machine "
                        "is not enough)")
    p.add_argument("--gpu-memory-utilization", type=float, default=GPU_UTIL)
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str]) -> int:
    import dataclasses

    from core.hardware import detect

    args = parser().parse_args(argv)
    name = args.plan or args.model
    if not name:
        raise UserError("--plan needs a model", "python -m serve --plan ALIAS|FOLDER|HUB_ID")
    hw = detect()
    gpus = None
    if args.gpu:
        from core.gpus import parse

        gpus = parse(args.gpu)
        hw = dataclasses.replace(hw, gpus=tuple(gpus))
    elif args.device == "cuda" and not hw.has_gpu:
        raise UserError("--device cuda: no NVIDIA GPU is visible here", "plan one with --gpu CLASS (e.g. --gpu l40s, "
                        '--gpu 4xl40s) or --gpu "NAME, MiB, X.Y"')
    elif args.device != "cpu":
        gpus = list(hw.gpus)

    def plan_of(s: Subject) -> Plan:
        weights = header_weights(s.folder) if s.folder is not None else None
        kw = {"concurrency": args.concurrency, "max_model_len": args.max_model_len,
              "max_pixels": args.max_image_pixels, "images": args.images_per_prompt,
              "gpu_util": args.gpu_memory_utilization}
        f = format_of(s.fmt)[0]
        if args.device != "cpu" and gpus and (f is None or f.engine == "vllm"):
            return gpu_plan(s, hw, gpus, nodes=args.nodes, weights=weights, **kw)
        return make_plan(s, hw, weights=weights, gpus=gpus if args.device != "cpu" else [], device=args.device,
                         **kw)

    s = subject(name)
    p = plan_of(s)
    here = hw if p.device == "cuda" else dataclasses.replace(hw, gpus=())
    alt_name = four_bit_alternative(s.name, here) if p.status == "no" else None
    alt = plan_of(subject(alt_name)) if alt_name else None
    print("\n".join(lines(p, hw, alt)), flush=True)
    if p.gpu and is_w4a16(s.fmt) and (refusal := preflight_refusal(p.gpu, s.name, s.bf16_alias)):
        raise refusal
    return 0


if __name__ == "__main__":
    from core.errors import run_cli

    run_cli(lambda a: main(sys.argv[1:] if a is None else a))
