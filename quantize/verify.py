"""Verify exports: reload each one, compare next-token distributions with the 16-bit base on held-out prompts.

For each prompt (with an image for VL) the base decodes a short greedy continuation; then the base, plain RTN
(the base with every 4-bit Linear rounded to nearest by AutoRound's own int4 sym quantizer, group 128) and every
export are run teacher-forced over prompt + continuation. Reported per model: mean KL(base || model) over the
continuation positions and top-1 agreement with the base. RTN vs tuned on the same prompts is what tuning bought.

Loading (each format's `verify_load` rule, core/formats): AutoRound and GPTQ exports reload through transformers
with `AutoRoundConfig` (AutoRound's own CPU/GPU kernels), compressed-tensors through transformers itself. AutoRound
has no CPU kernel for AWQ without extra libraries (gptqmodel/autoawq), so an AWQ export is read here directly: its
packed int4 weights, zero points and scales are dequantized into the 16-bit architecture by the format's
`dequantize` rule (the same arithmetic vLLM's AWQ kernels do). Formats that come from one tuning must then agree
with each other: a packing error in any format shows up as a large cross-format KL and fails verify.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import artifact
from core.formats import FORMATS, for_quant_method
from quantize.recipes import BITS, GROUP_SIZE
from serve.client import PIXELS_PER_TOKEN

NEW_TOKENS = 16
CROSS_FORMAT_KL_MAX = 0.05  # nats: formats of one tuning must agree (bf16 kernel noise is far below this)

TEXT_PROMPTS = [
    "Explain what a hash table is and why lookups are fast.",
    "Write a short note about reading files line by line in Python.",
    "What does a context manager do?",
    "Describe how a priority queue works.",
    "Summarize the difference between a list and a tuple.",
    "How should errors from a network call be handled?",
]
VL_PROMPTS = [
    "Describe this image.",
    "What colours and shapes are in the picture?",
    "Is there a circle in this image? Answer briefly.",
]


@dataclass
class Result:
    name: str  # "rtn", "autoround", "gptq", "awq", "compressed-tensors"
    loader: str
    kl_mean: float | None = None
    kl_max: float | None = None
    top1: float | None = None
    positions: int = 0
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Report:
    prompts: int
    positions: int
    with_image: bool
    results: dict[str, Result] = field(default_factory=dict)
    cross_format: dict[str, float] = field(default_factory=dict)  # "gptq~awq": KL
    problems: list[str] = field(default_factory=list)
    vision: dict | None = None  # a VL GGUF's projector run by llama.cpp (gguf_vision)
    dtype: str = "float32"  # what base, RTN and the safetensors exports ran in (compute_dtype)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "positions": self.positions, "with_image": self.with_image,
                "new_tokens_per_prompt": NEW_TOKENS, "dtype": self.dtype,
                "results": {k: r.as_dict() for k, r in self.results.items()},
                "cross_format_kl": {k: round(v, 6) for k, v in self.cross_format.items()},
                "vision": self.vision, "problems": self.problems, "ok": self.ok}

    def table(self) -> str:
        lines = [(f"verify: {self.prompts} held-out prompts{' with an image' if self.with_image else ''}, "
                  f"{self.positions} greedy positions, vs the 16-bit base (run in {self.dtype})"),
                 f"  {'model':<20} {'KL mean':>10} {'KL max':>10} {'top-1':>7}  loader"]
        for r in self.results.values():
            if r.error:
                lines.append(f"  {r.name:<20} FAILED: {r.error}")
            else:
                lines.append(f"  {r.name:<20} {r.kl_mean:>10.5f} {r.kl_max:>10.5f} {r.top1:>7.1%}  {r.loader}")
        if self.cross_format:
            lines.append("  formats agree: " + ", ".join(f"{k} KL {v:.2e}" for k, v in self.cross_format.items()))
        if self.vision:
            v = self.vision
            lines.append(f"  gguf vision: {v['mmproj']} -> {v['image_tokens']} image tokens (transformers: "
                         f"{v['image_tokens_transformers']}), answered {v['answer_tokens']} tokens; the gguf row "
                         "above is the language model on text prompts")
        return "\n".join(lines)


# ---------------------------------------------------------------- inputs

def test_image():
    """A deterministic picture (no files needed): a red circle, a blue square and a green bar on white."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (128, 128), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((10, 10, 60, 60), fill=(220, 30, 30))
    d.rectangle((70, 20, 115, 65), fill=(30, 60, 220))
    d.rectangle((15, 85, 115, 105), fill=(40, 170, 60))
    return img


def text_prompts(held_out: list[str] | None, n: int = 6) -> list[str]:
    """Held-out prompts: from texts never given to the calibration (tiny: corpus tail), else a fixed list."""
    out = []
    for t in held_out or []:
        head = t.split(". ")[0].strip()
        if 10 < len(head) < 300:
            out.append(f"Explain: {head}.")
        if len(out) >= n:
            break
    return out or TEXT_PROMPTS[:n]


def build_inputs(base_dir: Path, modality: str, prompts: list[str]) -> list[dict]:
    import torch
    from transformers import AutoProcessor, AutoTokenizer

    items = []
    if modality == "vl":
        proc = AutoProcessor.from_pretrained(base_dir)
        img = test_image()
        for p in VL_PROMPTS:
            msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": p}]}]
            enc = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
            items.append(dict(enc))
        # one text-only prompt too: the language model alone
        tok = proc.tokenizer
        enc = tok.apply_chat_template([{"role": "user", "content": prompts[0]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True, return_tensors="pt")
        items.append(dict(enc))
    else:
        tok = AutoTokenizer.from_pretrained(base_dir)
        for p in prompts:
            enc = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True, return_tensors="pt")
            items.append(dict(enc))
    for it in items:
        for k, v in list(it.items()):
            if not isinstance(v, torch.Tensor):
                it.pop(k)
    return items


# ---------------------------------------------------------------- models

def _auto_cls(modality: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if modality == "vl" else AutoModelForCausalLM


def compute_dtype(device: str, base_dir: Path | None = None):
    """bf16 on a GPU. On a CPU float32 (bf16 matmuls are emulated, and slow, on CPUs without AVX-512 bf16), unless
    the base in float32 would take over half this machine's RAM: then bf16 (a 4B base is 16 GB in float32 and
    24 GB of RAM could not hold it beside an export). Base, RTN and exports always run in the same dtype."""
    import torch

    if str(device).startswith("cuda"):
        return torch.bfloat16
    if base_dir is not None:
        from core import hardware

        fp32_gib = 2 * artifact.inspect(base_dir).weight_bytes / 2**30  # the base is stored in 16 bits
        if fp32_gib > hardware.detect().mem_total_gib / 2:
            return torch.bfloat16
    return torch.float32


def load_base(path: Path, modality: str, device: str, dtype=None):
    m = _auto_cls(modality).from_pretrained(path, dtype=dtype or compute_dtype(device, path), device_map=device)
    return m.eval()


def load_export(path: Path, fmt: str, modality: str, device: str, base_dir: Path | None = None, dtype=None):
    """(model, loader description): reloaded the way its format's `verify_load` rule says (core/formats)."""

    dtype = dtype or compute_dtype(device, base_dir)
    qc = artifact.quantization_config(artifact.read_config(path))
    spec = for_quant_method(qc.get("quant_method"))
    if spec.verify_load == "autoround-config":
        from transformers import AutoRoundConfig

        m = _auto_cls(modality).from_pretrained(path, dtype=dtype, device_map=device,
                                                quantization_config=AutoRoundConfig(backend="auto"))
        return m.eval(), "transformers + AutoRoundConfig"
    if spec.verify_load == "transformers":
        m = _auto_cls(modality).from_pretrained(path, dtype=dtype, device_map=device)
        return m.eval(), f"transformers ({spec.name})"
    if spec.verify_load == "dequantize":
        return (load_dequantized(path, base_dir, modality, device, dtype),
                f"packed {spec.name.upper()} int4 dequantized here")
    raise ValueError(f"no loader for quant_method {qc.get('quant_method')}")


def _module_tensors(sf, names: set[str], mod: str):
    """leaf -> that tensor of module `mod` in an open safetensors file (None when it has none)."""
    return lambda leaf: sf.get_tensor(f"{mod}.{leaf}") if f"{mod}.{leaf}" in names else None


def load_dequantized(path: Path, base_dir: Path, modality: str, device: str, dtype=None):
    """The 16-bit base architecture filled with an export's tensors, its packed int4 weights dequantized one module
    at a time by its format's `dequantize` rule (peak: the model plus one module's tensors). Every tensor of the
    export must land in the model, and every weight of the model must come from the export."""
    import torch
    from safetensors import safe_open

    qc = artifact.quantization_config(artifact.read_config(path))
    spec = for_quant_method(qc.get("quant_method"))
    if spec.dequantize is None or not spec.packed:
        raise ValueError(f"no dequantize rule for quant_method {qc.get('quant_method')}")
    weight, *side = spec.packed
    group = int(qc.get("group_size", GROUP_SIZE))
    model = load_base(base_dir, modality, "cpu", dtype)
    own = model.state_dict()
    filled, unknown = set(), []
    with torch.no_grad():
        for f in sorted(Path(path).glob("*.safetensors")):
            with safe_open(str(f), "pt") as sf:
                names = set(sf.keys())
                for k in sorted(names):
                    mod, _, leaf = k.rpartition(".")
                    if leaf in side and f"{mod}.{weight}" in names:
                        continue
                    if leaf == weight:
                        t = spec.dequantize(_module_tensors(sf, names, mod), group)
                        k = f"{mod}.weight"
                    else:
                        t = sf.get_tensor(k)
                    if k not in own:
                        unknown.append(k)
                        continue
                    own[k].copy_(t.to(own[k].dtype))
                    filled.add(k)
                    del t
    if unknown:
        raise RuntimeError(f"{len(unknown)} export tensors have no place in the model, e.g. {unknown[:2]}")
    done = {own[k].data_ptr() for k in filled}  # a tied head shares the embedding's storage: filled with it
    left = [k for k in own if k not in filled and own[k].data_ptr() not in done and not k.endswith("inv_freq")]
    if left:
        raise RuntimeError(f"export lacks {len(left)} tensors of the model, e.g. {left[:2]}")
    return model.to(device).eval()


def rtn_inplace(model, linear_names: list[str]) -> None:
    """Plain RTN: AutoRound's int4 symmetric quantizer, group 128, applied to the given Linear weights."""
    import torch
    from auto_round.data_type.int import quant_tensor_sym

    mods = dict(model.named_modules())
    with torch.no_grad():
        for name in linear_names:
            lin = mods.get(name)
            if lin is None:
                raise RuntimeError(f"RTN: no module {name}")
            w = lin.weight.data.float()
            out_f, in_f = w.shape
            q, _, _ = quant_tensor_sym(w, bits=BITS, group_size=GROUP_SIZE)
            lin.weight.data.copy_(q.reshape(out_f, in_f).to(lin.weight.dtype))


GGUF_TOP_K = 4096  # logprobs asked of llama.cpp per position: the whole vocabulary of a tiny model; a real one's
#                    tail beyond them shares the remaining probability evenly


def _threads() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def llamacpp_server(path: Path, n_ctx: int, mmproj: Path | None = None, image_max_tokens: int | None = None):
    """llama.cpp's server (xllamacpp) in this process on a free loopback port, one slot, flags as serve maps them."""
    import xllamacpp

    from serve.engines.llamacpp_server import params, parse

    argv = ["--model", str(path), "--alias", "verify", "--port", "0", "--ctx-per-slot", str(n_ctx),
            "--threads", str(_threads())]
    if mmproj is not None:
        argv += ["--mmproj", str(mmproj), "--image-max-tokens", str(image_max_tokens or -1)]
    p = params(parse(argv))
    p.warmup, p.endpoint_metrics, p.verbosity = False, False, 0
    return xllamacpp.Server(p), f"llama.cpp (xllamacpp {xllamacpp.__version__})"


def gguf_logits(path: Path, seqs, vocab: int) -> tuple[list, str]:
    """Teacher-forced next-token log-probabilities of a .gguf file run by llama.cpp over the same token ids (its
    vocabulary is the base's), at the continuation positions: one 1-token completion per position, its prompt the
    ids so far (llama.cpp's prompt cache keeps the prefix), with the top GGUF_TOP_K logprobs. Returns (log-probs per
    prompt over `vocab` entries, loader description)."""
    import torch

    longest = max(int(full.shape[1]) for full, _ in seqs)
    server, loader = llamacpp_server(path, longest + 8)
    k = min(vocab, GGUF_TOP_K)
    out = []
    try:
        for full, plen in seqs:
            ids = [int(t) for t in full[0].tolist()]
            rows = []
            for j in range(plen - 1, len(ids) - 1):
                r = server.handle_completions({"prompt": ids[: j + 1], "max_tokens": 1, "logprobs": k,
                                               "temperature": 0.0, "cache_prompt": True})
                if "choices" not in r:
                    raise RuntimeError(f"llama.cpp: {str(r.get('error', r))[:200]}")
                top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
                row = torch.empty(vocab)
                rest = max(1e-12, 1.0 - sum(math.exp(t["logprob"]) for t in top))
                row.fill_(math.log(rest / max(1, vocab - len(top))))
                for t in top:
                    if t["id"] < vocab:
                        row[t["id"]] = t["logprob"]
                rows.append(row)
            out.append(torch.stack(rows))
    finally:
        del server
    return out, loader + (f", top-{k} logprobs" if k < vocab else "")


def _chat(server, content: list, max_tokens: int) -> dict:
    r = server.handle_chat_completions({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                                        "temperature": 0.0})
    if "choices" not in r:
        raise RuntimeError(f"llama.cpp: {str(r.get('error', r))[:200]}")
    return r


def gguf_vision(path: Path, mmproj: Path, base_dir: Path, debug: bool = False) -> dict:
    """A VL GGUF's projector run by llama.cpp's mtmd on the test picture: how many image tokens it makes (must equal
    what transformers' processor makes: same patch size and merge) and that an answer comes back with it. llama.cpp
    counts prompt tokens with and without the picture; what the picture adds beyond its image tokens (the vision
    markers of the chat template) comes from transformers' count of the same two prompts."""
    import base64
    import io

    from transformers import AutoProcessor

    img, prompt = test_image(), VL_PROMPTS[0]
    proc = AutoProcessor.from_pretrained(base_dir)

    def hf(content):
        return proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]

    with_img = hf([{"type": "image", "image": img}, {"type": "text", "text": prompt}])
    image_token = artifact.read_config(base_dir).get("image_token_id")
    hf_tokens = int((with_img == image_token).sum())
    markers = int(with_img.shape[1]) - int(hf([{"type": "text", "text": prompt}]).shape[1]) - hf_tokens
    buf = io.BytesIO()
    img.save(buf, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    budget = artifact.max_image_pixels(base_dir)
    server, _ = llamacpp_server(path, 1024, mmproj, budget // PIXELS_PER_TOKEN if budget else None)
    try:
        out = _chat(server, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}],
                    NEW_TOKENS)
        bare = _chat(server, [{"type": "text", "text": prompt}], 1)
    finally:
        del server
    n_img = int(out["usage"]["prompt_tokens"]) - int(bare["usage"]["prompt_tokens"]) - markers
    return {"mmproj": Path(mmproj).name, "image_tokens": n_img, "image_tokens_transformers": hf_tokens,
            "answer_tokens": int(out["usage"]["completion_tokens"]),
            "answer": (out["choices"][0]["message"]["content"] or "")[:200]}


# ---------------------------------------------------------------- metrics

def _logits(model, items: list[dict], seqs, device: str):
    import torch

    out = []
    with torch.no_grad():
        for it, (full, plen) in zip(items, seqs):
            ids = full.to(device)
            plen_ids = it["input_ids"].shape[1]
            kw = {}
            for k, v in it.items():
                if k in ("input_ids", "attention_mask"):
                    continue
                if v.dim() == 2 and v.shape[1] == plen_ids:  # per-token side inputs (mm_token_type_ids): extend
                    v = torch.cat([v, v.new_zeros(v.shape[0], ids.shape[1] - plen_ids)], dim=1)
                kw[k] = v.to(device)
            lg = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits
            out.append(lg[0, plen - 1:ids.shape[1] - 1].float().cpu())
    return out


def compare(ref: list, got: list) -> tuple[float, float, float, int]:
    """(mean KL(ref||got), max KL, top-1 agreement, positions)."""
    import torch

    kls, agree, n = [], 0, 0
    for a, b in zip(ref, got):
        lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)  # float rounding can dip below 0
        kls.append(kl)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += a.shape[0]
    k = torch.cat(kls)
    return float(k.mean()), float(k.max()), agree / max(n, 1), n


def release_memory() -> None:
    """Collect, then hand freed heap back to the OS (glibc keeps it otherwise: loading the next export on top of
    the last one's freed pages took a 4B model to 24.9 GB RSS, over this machine's RAM)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def run(base_dir: Path, exports: dict[str, Path], modality: str, linear_names: list[str], device: str = "cpu",
        held_out: list[str] | None = None, log=print, debug: bool = False, mmproj: Path | None = None) -> Report:
    """Every export vs the 16-bit base. A VL GGUF (`mmproj` given): its language model on the text prompts (llama.cpp
    is fed token ids, not pictures), and its projector through `gguf_vision`."""
    import torch
    from transformers.utils import logging as hf_logging

    if not debug:
        import warnings

        hf_logging.set_verbosity_error()  # load reports list every packed tensor as "unexpected"
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
    torch.manual_seed(0)
    prompts = text_prompts(held_out)
    items = build_inputs(base_dir, modality, prompts)
    dtype = compute_dtype(device, base_dir)
    base = load_base(base_dir, modality, device, dtype)
    seqs = []
    with torch.no_grad():
        for it in items:
            enc = {k: v.to(device) for k, v in it.items()}
            gen = base.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
            seqs.append((gen.cpu(), it["input_ids"].shape[1]))
    ref = _logits(base, items, seqs, device)
    positions = sum(r.shape[0] for r in ref)
    rep = Report(prompts=len(items), positions=positions, with_image=modality == "vl", dtype=str(dtype).split(".")[-1])

    t0 = time.time()
    rtn_inplace(base, linear_names)
    rtn = _logits(base, items, seqs, device)
    kl, klmax, top1, n = compare(ref, rtn)
    rep.results["rtn"] = Result("rtn (plain, untuned)", "base + AutoRound int4 sym RTN", kl, klmax, top1, n,
                                round(time.time() - t0, 1))
    del base
    release_memory()

    got: dict[str, list] = {}
    for fmt, path in exports.items():
        t0 = time.time()
        spec = FORMATS.get(fmt)
        gguf = spec is not None and spec.container == "gguf"  # llama.cpp runs it, on token ids
        try:
            if gguf:
                keep = [i for i, it in enumerate(items) if "pixel_values" not in it]
                lg, loader = gguf_logits(path, [seqs[i] for i in keep], int(ref[0].shape[-1]))
                ref_f = [ref[i] for i in keep]
                if mmproj is not None:
                    rep.vision = gguf_vision(path, mmproj, base_dir, debug=debug)
                    v = rep.vision
                    if v["image_tokens"] != v["image_tokens_transformers"]:
                        rep.problems.append(f"gguf: llama.cpp makes {v['image_tokens']} image tokens of the test "
                                            f"picture, transformers {v['image_tokens_transformers']}: the projector's "
                                            "metadata does not match the model")
                    if v["answer_tokens"] < 1:
                        rep.problems.append("gguf: no answer to the test picture through the projector")
                    log(f"verified gguf vision: {v['image_tokens']} image tokens, {v['answer_tokens']} answer tokens")
            else:
                model, loader = load_export(path, fmt, modality, device, base_dir, dtype)
                lg = _logits(model, items, seqs, device)
                del model
            release_memory()
        except Exception as e:  # noqa: BLE001 - reported, fails verify
            rep.results[fmt] = Result(fmt, "", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            rep.problems.append(f"{fmt}: does not reload: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        kl, klmax, top1, n = compare(ref_f if gguf else ref, lg)
        rep.results[fmt] = Result(fmt, loader, kl, klmax, top1, n, round(time.time() - t0, 1))
        if not all(math.isfinite(x) for x in (kl, klmax)):
            rep.problems.append(f"{fmt}: non-finite logits")
        got[fmt] = lg
        log(f"verified {fmt}: KL {kl:.5f}, top-1 {top1:.1%} ({loader})")
    # the W4A16 exports of one tuning (GGUF quantizes with its own scheme)
    names = [n for n in got if n in FORMATS and FORMATS[n].w4a16]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            kl, _, _, _ = compare(got[a], got[b])
            rep.cross_format[f"{a}~{b}"] = kl
            if not kl <= CROSS_FORMAT_KL_MAX:
                rep.problems.append(f"{a} and {b} disagree (KL {kl:.3g} > {CROSS_FORMAT_KL_MAX}): a packing error")
    return rep
