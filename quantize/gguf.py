"""GGUF export: a 16-bit Qwen3 or Qwen3-VL model -> .gguf files for llama.cpp, linted, verified, with a model card.

    python -m quantize --model tiny-text --formats gguf [--gguf-type q4_k_m|q4_0|bf16]

- q4_k_m (default) / q4_0: AutoRound tunes (or rounds, iters=0) with its `GGUF:Q4_K_M` / `GGUF:Q4_0` scheme and
  writes the file through the llama.cpp converter it bundles (`format="gguf:q4_k_m"`).
- bf16: no quantization; the same bundled converter writes the 16-bit weights (the speed baseline on llama.cpp).

The artifact is `<artifact root>/<family>-gguf/` (bf16: `<family>-gguf-bf16/`): the .gguf file, copies of the base's
config/tokenizer/chat template (so the folder is recognisable and the catalog finds it), quantization_report.json
and README.md. A Qwen3-VL artifact also holds its vision tower and merger as `mmproj-<name>-F16.gguf` (16-bit, written
by the same converter; AutoRound's own mmproj is F32), which llama.cpp's mtmd loads beside the language model.

The converter needs the `gguf` Python package in the version of llama.cpp's own source tree (`gguf-py`): the PyPI
release of the same number (0.19.0) lacks architectures the converter names (MODEL_ARCH.DFLASH). A tokenizer the
converter does not know by hash (the tiny models' locally trained ones) is accepted when its pre-tokenizer is
exactly Qwen2's regex (Qwen3 uses Qwen2's), and written as `qwen2`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import catalog
from core.artifact import MMPROJ_PREFIX, REPORT_FILE, gguf_file, mmproj_file
from core.errors import UserError
from quantize.layout import Layout
from quantize.options import QuantizeOptions
from quantize.problems import Problem, error, warning

# general.file_type (gguf.LlamaFileType) of each type
FILE_TYPES = {"q4_0": 2, "q4_k_m": 15, "bf16": 32}
# tensor types the decoder's Linear weights may have per file type (Q4_K_M mixes in Q6_K for some v/down)
LINEAR_TYPES = {"q4_0": {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q6_K"},
                "q4_k_m": {"Q4_K", "Q5_K", "Q6_K", "Q8_0"},
                "bf16": {"BF16"}}
MAIN_TYPE = {"q4_0": "Q4_0", "q4_k_m": "Q4_K", "bf16": "BF16"}
LINEAR_LEAVES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
GGUF_ARCH = {catalog.TEXT_ARCH: "qwen3", catalog.VL_ARCH: "qwen3vl"}

PROJECTOR_TYPE = {catalog.VL_ARCH: "qwen3vl_merger"}  # clip.projector_type llama.cpp's mtmd expects
MMPROJ_FILE_TYPE = 1  # MOSTLY_F16 (norms and biases stay F32)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
UNKNOWN_PRETOKENIZER = "BPE pre-tokenizer was not recognized"  # the converter's NotImplementedError
BF16_KL_MAX = 0.01  # nats: a 16-bit GGUF must match the base (a conversion error shows far above this)
INSTALL_GGUF = ("install gguf-py from llama.cpp's source tree, e.g. `make gguf-py` (pip download --no-binary :all: "
                "llama-cpp-python==0.3.36, then pip install its vendor/llama.cpp/gguf-py)")


def log(msg: str) -> None:
    print(f"[quantize] {msg}", file=sys.stderr, flush=True)


def dest_alias(base_alias: str, gguf_type: str) -> str:
    return base_alias + ("-bf16" if gguf_type == "bf16" else "")


# ---------------------------------------------------------------- reading a file

def read_header(path: Path) -> dict:
    """What lint needs from a .gguf file: architecture, file type, tensor types, tokenizer facts."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def field(name, default=None):
        f = r.fields.get(name)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # noqa: BLE001 - an array field we do not need in full
            return default

    return {
        "version": field("GGUF.version"),
        "architecture": field("general.architecture"),
        "file_type": field("general.file_type"),
        "tensor_types": {t.name: t.tensor_type.name for t in r.tensors},
        "tokenizer_model": field("tokenizer.ggml.model"),
        "tokenizer_pre": field("tokenizer.ggml.pre"),
        "has_vocab": "tokenizer.ggml.tokens" in r.fields,
        "has_chat_template": "tokenizer.chat_template" in r.fields,
        "context_length": field(f"{field('general.architecture')}.context_length"),
        "embedding_length": field(f"{field('general.architecture')}.embedding_length"),
        "projector_type": field("clip.projector_type"),
        "has_vision_encoder": field("clip.has_vision_encoder"),
        "projection_dim": field("clip.vision.projection_dim"),
    }


def linear_types(h: dict) -> dict[str, str]:
    """Tensor type of each decoder Linear weight (blk.N.attn_*/ffn_*.weight) in a `read_header` result."""
    return {n: t for n, t in (h.get("tensor_types") or {}).items()
            if n.startswith("blk.") and n.endswith(".weight") and n.split(".")[2] in LINEAR_LEAVES}


def is_16bit(path: Path) -> bool:
    """Whether a .gguf file's decoder Linears are mostly 16/32-bit (a BF16 export, not a 4-bit one)."""
    types = list(linear_types(read_header(path)).values())
    return bool(types) and max(set(types), key=types.count) in ("BF16", "F16", "F32")


# ---------------------------------------------------------------- lint (pure functions)

def check_header(h: dict, gguf_type: str, architecture: str) -> list[Problem]:
    out: list[Problem] = []
    want_arch = GGUF_ARCH.get(architecture)
    if want_arch and h.get("architecture") != want_arch:
        out.append(error("gguf", f"general.architecture is {h.get('architecture')!r}, expected {want_arch!r}"))
    if h.get("file_type") != FILE_TYPES[gguf_type]:
        out.append(error("gguf", f"general.file_type is {h.get('file_type')}, expected {FILE_TYPES[gguf_type]} "
                                f"({gguf_type})"))
    types = h.get("tensor_types") or {}
    linears = linear_types(h)
    if not linears:
        out.append(error("gguf", "no decoder Linear weights (blk.N.attn_*/ffn_*.weight) in the file"))
    bad = sorted(n for n, t in linears.items() if t not in LINEAR_TYPES[gguf_type])
    if bad:
        out.append(error("gguf", f"{len(bad)} decoder Linear weights are not {gguf_type} types, e.g. {bad[0]} is "
                                f"{linears[bad[0]]}"))
    main = sum(1 for t in linears.values() if t == MAIN_TYPE[gguf_type])
    if linears and main < len(linears) / 2:
        out.append(error("gguf", f"only {main} of {len(linears)} decoder Linear weights are {MAIN_TYPE[gguf_type]}"))
    norms = [n for n, t in types.items() if n.endswith("norm.weight") and t not in ("F32", "BF16", "F16")]
    if norms:
        out.append(error("gguf", f"norm weights stored quantized, e.g. {norms[0]}"))
    if "token_embd.weight" not in types:
        out.append(error("gguf", "token_embd.weight missing"))
    if not h.get("has_vocab"):
        out.append(error("gguf", "no vocabulary (tokenizer.ggml.tokens) in the file"))
    if not h.get("has_chat_template"):
        out.append(warning("gguf", "no chat template in the file: llama.cpp's server falls back to a generic one"))
    return out


def check_mmproj(h: dict, lm: dict, architecture: str) -> list[Problem]:
    """The vision projector file: llama.cpp's clip/mtmd metadata, 16-bit, and its output width = the LM's input."""
    out: list[Problem] = []
    if h.get("architecture") != "clip":
        out.append(error("mmproj", f"general.architecture is {h.get('architecture')!r}, expected 'clip'"))
    want = PROJECTOR_TYPE.get(architecture)
    if want and h.get("projector_type") != want:
        out.append(error("mmproj", f"clip.projector_type is {h.get('projector_type')!r}, expected {want!r}"))
    if not h.get("has_vision_encoder"):
        out.append(error("mmproj", "clip.has_vision_encoder is not set: no vision tower in the projector file"))
    low = sorted(n for n, t in (h.get("tensor_types") or {}).items() if t not in ("F16", "BF16", "F32"))
    if low:
        out.append(error("mmproj", f"{len(low)} vision tensors are quantized (the vision tower stays 16-bit), e.g. "
                                  f"{low[0]} is {h['tensor_types'][low[0]]}"))
    if h.get("file_type") not in (None, MMPROJ_FILE_TYPE):
        out.append(warning("mmproj", f"general.file_type is {h.get('file_type')}, expected {MMPROJ_FILE_TYPE} (F16)"))
    if h.get("projection_dim") and lm.get("embedding_length") and h["projection_dim"] != lm["embedding_length"]:
        out.append(error("mmproj", f"the projector outputs {h['projection_dim']} values per image token, the language "
                                  f"model takes {lm['embedding_length']}"))
    return out


def check_files(files: set[str], require_card: bool = False, vl: bool = False) -> list[Problem]:
    out = []
    ggufs = [f for f in files if f.endswith(".gguf") and not f.startswith(MMPROJ_PREFIX)]
    if len(ggufs) != 1:
        out.append(error("files", f"expected one .gguf file, found {len(ggufs)}"))
    projs = [f for f in files if f.startswith(MMPROJ_PREFIX) and f.endswith(".gguf")]
    if vl and len(projs) != 1:
        out.append(error("files", f"expected one vision projector {MMPROJ_PREFIX}*.gguf, found {len(projs)}"))
    if not vl and projs:
        out.append(error("files", f"a text model with a vision projector file: {projs[0]}"))
    for f in ("config.json", "tokenizer_config.json"):
        if f not in files:
            out.append(error("files", f"{f} missing (copied from the base)"))
    if require_card:
        for f in ("README.md", "quantization_report.json"):
            if f not in files:
                out.append(error("files", f"{f} missing"))
    return out


def lint_folder(folder: Path, gguf_type: str, architecture: str, require_card: bool = False) -> list[Problem]:
    folder = Path(folder)
    vl = architecture in PROJECTOR_TYPE
    probs = check_files({p.name for p in folder.iterdir() if p.is_file()}, require_card, vl=vl)
    f = gguf_file(folder)
    if f is None:
        return probs
    try:
        h = read_header(f)
    except Exception as e:  # noqa: BLE001 - truncated / not a GGUF file
        return probs + [error("gguf", f"{f.name}: header unreadable ({type(e).__name__}: {str(e)[:120]})")]
    probs += check_header(h, gguf_type, architecture)
    m = mmproj_file(folder) if vl else None
    if m is not None:
        try:
            probs += check_mmproj(read_header(m), h, architecture)
        except Exception as e:  # noqa: BLE001 - truncated / not a GGUF file
            probs.append(error("mmproj", f"{m.name}: header unreadable ({type(e).__name__}: {str(e)[:120]})"))
    return probs


# ---------------------------------------------------------------- the converter

def _conversion(base_dir: Path):
    """AutoRound's bundled llama.cpp converter, importable with the installed gguf-py (else a UserError)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("the `gguf` Python package is not installed (GGUF export needs it)", INSTALL_GGUF) from None
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    try:
        return get_conversion(base_dir)
    except AttributeError as e:  # e.g. MODEL_ARCH.DFLASH: a gguf-py older than the converter
        raise UserError(f"the installed `gguf` package does not match AutoRound's llama.cpp converter ({e})",
                        INSTALL_GGUF) from None


def _qwen2_split(model_dir: Path) -> bool:
    try:
        pre = json.loads((Path(model_dir) / "tokenizer.json").read_text()).get("pre_tokenizer") or {}
    except (OSError, json.JSONDecodeError):
        return False
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    return any(p.get("type") == "Split" and (p.get("pattern") or {}).get("Regex") == QWEN2_SPLIT
               for p in parts or [] if isinstance(p, dict))


@contextmanager
def pretokenizer_fallback(ctx, model_dir: Path):
    """While converting: a BPE tokenizer whose hash the converter does not know, but whose pre-tokenizer is
    exactly Qwen2's regex, is written as `qwen2` (llama.cpp then splits text the same way). Any other unknown one
    is a user error (llama.cpp would split its text differently)."""
    base = sys.modules.get(ctx.module.__name__ + ".base")
    text_model = getattr(base, "TextModel", None)
    if text_model is None or not _qwen2_split(model_dir):
        try:
            yield
        except NotImplementedError as e:
            if UNKNOWN_PRETOKENIZER not in str(e):
                raise
            raise UserError("llama.cpp's converter does not know this model's tokenizer (its pre-tokenizer is "
                            "neither one it knows nor Qwen2's regex)", "leave gguf out of --formats and serve the "
                            "safetensors formats with vLLM; nothing was written") from None
        return
    original = text_model.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            log("tokenizer hash unknown to llama.cpp's converter; its pre-tokenizer is Qwen2's regex: writing 'qwen2'")
            return "qwen2"

    text_model.get_vocab_base_pre = get_vocab_base_pre
    try:
        yield
    finally:
        text_model.get_vocab_base_pre = original


def write_bf16(base_dir: Path, architecture: str, out_file: Path) -> None:
    import gguf

    ctx = _conversion(base_dir)
    with pretokenizer_fallback(ctx, base_dir):
        cls = ctx.get_model_class(architecture)
        m = cls(Path(base_dir), gguf.LlamaFileType.MOSTLY_BF16, Path(out_file))
        m.write()


def write_mmproj(base_dir: Path, architecture: str, out_file: Path) -> None:
    """The vision tower and merger of a VL base as a 16-bit (F16) llama.cpp projector file."""
    import gguf
    from auto_round.export.export_to_gguf.llama_cpp_conversion import AutoRoundModelType

    ctx = _conversion(base_dir)
    cls = ctx.get_model_class(architecture, model_type=AutoRoundModelType.MMPROJ)
    cls(Path(base_dir), gguf.LlamaFileType.MOSTLY_F16, Path(out_file)).write()


def write_quantized(model_location: str, base_dir: Path, gguf_type: str, kwargs: dict, out_dir: Path,
                    work_space: Path) -> Path:
    """AutoRound with its GGUF scheme; returns the .gguf it wrote."""
    os.environ["AR_WORK_SPACE"] = str(work_space)
    work_space.mkdir(parents=True, exist_ok=True)
    ctx = _conversion(base_dir)
    from auto_round import AutoRound

    kw = dict(kwargs)
    kw["scheme"] = f"GGUF:{gguf_type.upper()}"
    kw.pop("quant_lm_head", None)  # the GGUF scheme decides the output/embedding types itself
    with pretokenizer_fallback(ctx, base_dir):
        ar = AutoRound(model_location, **kw)
        ar.quantize_and_save(str(out_dir), format=f"gguf:{gguf_type}")
    del ar
    found = sorted((p for p in Path(out_dir).rglob("*.gguf") if not p.name.startswith(MMPROJ_PREFIX)),
                   key=lambda p: p.stat().st_size, reverse=True)
    if not found:
        raise RuntimeError(f"AutoRound wrote no .gguf under {out_dir}")
    return found[0]


# ---------------------------------------------------------------- the whole export

@dataclass
class Job:
    """One GGUF export, checked and planned by `prepare` (nothing written yet); `build` writes it into the run's
    staging folder, beside the safetensors formats, so that a run checks everything before any tuning and places
    nothing unless every format passed (quantize/api.py `run`)."""

    opts: QuantizeOptions
    resolved: catalog.Resolved
    arch: str
    modality: str
    dev: str
    local_corpus: bool
    base_dir: Path
    lay: Layout
    stem: str
    fname: str
    alias: str
    dest: Path


def prepare(opts: QuantizeOptions, resolved: catalog.Resolved, arch: str, modality: str, dest: Path) -> Job:
    """Every GGUF check that needs no tuning (architecture, base files, converter, calibration source); writes
    nothing. The options, the base model and the destination were checked by the caller (quantize/api.py)."""
    from quantize import calibration, layout, recipes, source

    if arch not in GGUF_ARCH:
        raise UserError(f"GGUF export supports Qwen3 and Qwen3-VL models, not {arch}",
                        "export this model with --formats autoround,gptq,awq and serve it with vLLM")
    base_dir = source.base_folder(resolved)
    if not opts.debug:
        os.environ.setdefault("AR_LOG_LEVEL", "ERROR")  # before AutoRound loads; --debug shows its log
    _conversion(base_dir)  # fail before any tuning when gguf-py does not fit
    import torch

    dev = recipes.resolve_device(opts.device, torch.cuda.is_available())
    lay = layout.from_safetensors(base_dir, arch)
    stem = resolved.variant.family.base_alias if resolved.variant else Path(resolved.location).name
    local_corpus = source.local_corpus(resolved)
    if opts.gguf_type != "bf16" and opts.dataset is None and not local_corpus and source.offline():
        raise UserError(f"no --dataset given, and AutoRound's default ({calibration.AUTOROUND_DEFAULT}) "
                        "needs the network but HF_HUB_OFFLINE is set",
                        "pass --dataset with a local .txt/.jsonl/.json file")
    return Job(opts=opts, resolved=resolved, arch=arch, modality=modality, dev=dev, local_corpus=local_corpus,
               base_dir=base_dir, lay=lay, stem=stem, fname=f"{stem}-{opts.gguf_type.upper()}.gguf",
               alias=dest.name, dest=dest)


def build(job: Job, st) -> Path:
    """Write, lint, verify and document the artifact inside `st` (an export.Staging); returns its staged folder.
    Placing it is the caller's (nothing is placed when this raises)."""
    from quantize import calibration, card, export as exp, recipes, verify

    o = job.opts
    resolved, arch, modality, gtype, rec = job.resolved, job.arch, job.modality, o.gguf_type, o.recipe
    base_dir, lay, stem, fname, alias, dest = job.base_dir, job.lay, job.stem, job.fname, job.alias, job.dest
    dataset, dev, device_map, debug, do_verify = o.dataset, job.dev, o.device_map, o.debug, o.verify
    local_corpus, command = job.local_corpus, o.command
    linear_names = [e.name for e in lay.quantized]
    cal = None
    kwargs: dict = {}
    timings: dict = {}
    work = st.path / f"gguf-work-{alias}"  # AutoRound's output and scratch (the staging folder may hold others')
    folder = st.path / alias
    folder.mkdir()
    if gtype == "bf16":
        log(f"model {resolved.name} ({arch}): writing a 16-bit GGUF with llama.cpp's converter")
        t0 = time.time()
        write_bf16(base_dir, arch, folder / fname)
        timings["convert_s"] = round(time.time() - t0, 1)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base_dir)
        cal = calibration.prepare(dataset, tokenizer=tok, nsamples=rec.nsamples, seqlen=rec.seqlen,
                                  local_corpus=local_corpus)
        kwargs = recipes.autoround_kwargs(rec, device=dev, device_map=device_map)
        if cal.dataset is not None:
            kwargs["dataset"] = cal.dataset
        log(f"model {resolved.name} ({arch}); AutoRound scheme GGUF:{gtype.upper()}, recipe {rec.name} "
            f"(iters={rec.iters}); calibration: {cal.source}")
        t0 = time.time()
        written = write_quantized(resolved.location, base_dir, gtype, kwargs, work / "autoround",
                                  work / "work_space")
        os.replace(written, folder / fname)
        shutil.rmtree(work, ignore_errors=True)  # with AutoRound's F32 mmproj
        timings["tune_and_export_s"] = round(time.time() - t0, 1)
    mmproj = None
    if modality == "vl":
        mmproj = folder / f"{MMPROJ_PREFIX}{stem}-F16.gguf"
        log("writing the vision tower and merger as a 16-bit projector file for llama.cpp")
        t0 = time.time()
        write_mmproj(base_dir, arch, mmproj)
        timings["mmproj_s"] = round(time.time() - t0, 1)
    shutil.copy2(Path(base_dir) / "config.json", folder / "config.json")
    exp.complete(folder, base_dir)  # tokenizer, chat template, generation config
    probs = lint_folder(folder, gtype, arch)
    for p in probs:
        log(f"lint {alias}: {p}")
    errs = [p for p in probs if p.level == "error"]
    if errs:
        raise UserError(f"lint failed for {alias}: {errs[0].message}"
                        + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""),
                        "nothing was written; re-run with --debug for the full list", exit_code=3)
    log(f"lint {alias}: ok ({len(probs)} warning(s))")

    ver = None
    if do_verify:
        log("verifying: loading the GGUF with llama.cpp and comparing with the 16-bit base")
        rep = verify.run(base_dir, {"gguf": folder / fname}, modality, linear_names, device="cpu",
                         held_out=cal.held_out if cal else None, log=log, debug=debug, mmproj=mmproj)
        r = rep.results.get("gguf")
        if gtype == "bf16" and r is not None and r.kl_mean is not None and not r.kl_mean <= BF16_KL_MAX:
            rep.problems.append(f"the 16-bit GGUF disagrees with the base (KL {r.kl_mean:.3g} > {BF16_KL_MAX})")
        print(rep.table(), file=sys.stderr, flush=True)
        if not rep.ok:
            raise UserError(f"verify failed: {rep.problems[0]}",
                            "nothing was written; re-run with --debug for details", exit_code=4)
        ver = rep.as_dict()

    h = read_header(folder / fname)
    base_bytes = exp.folder_bytes(base_dir)
    art_bytes = (folder / fname).stat().st_size + (mmproj.stat().st_size if mmproj else 0)
    base_id = resolved.variant.family.base_hub_id if resolved.variant and resolved.variant.family.base_hub_id \
        else (resolved.location if resolved.source == "hub" else stem)
    report = {
        "alias": alias, "format": "gguf", "gguf_type": gtype, "file": fname, "quant_method": None,
        "mmproj": ({"file": mmproj.name, "bytes": mmproj.stat().st_size,
                    **{k: mh[k] for k in ("projector_type", "file_type", "projection_dim")},
                    "tensor_types": dict(Counter(mh["tensor_types"].values()))}
                   if mmproj and (mh := read_header(mmproj)) else None),
        "engine": "llama.cpp",
        "base": {"id": base_id, "source": resolved.source, "location": resolved.location, "architecture": arch},
        "gguf": {"architecture": h["architecture"], "file_type": h["file_type"],
                 "tensor_types": dict(Counter(h["tensor_types"].values())),
                 "tokenizer_pre": h["tokenizer_pre"]},
        "recipe": rec.as_dict() if gtype != "bf16" else None,
        "autoround_kwargs": {k: v for k, v in kwargs.items() if k != "dataset"} or None,
        "calibration": cal.card_dict() if cal else None, "layout": lay.as_dict(), "device": dev,
        "sizes": {"artifact_bytes": art_bytes, "base_bytes": base_bytes,
                  "ratio": round(art_bytes / base_bytes, 3) if base_bytes else None},
        "lint": [p.__dict__ for p in probs], "verify": ver, "versions": _versions(), "timings": timings,
        "path": str(dest), "max_model_len": resolved.variant.family.max_model_len if resolved.variant else 8192,
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    (folder / "README.md").write_text(card.render_gguf(report))
    errs = [p for p in check_files({p.name for p in folder.iterdir()}, require_card=True, vl=mmproj is not None)
            if p.level == "error"]
    if errs:
        raise UserError(f"{alias} is incomplete: {errs[0].message}", "nothing was written", exit_code=3)
    for p in folder.iterdir():
        p.chmod(0o644)
    return folder


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("auto-round", "transformers", "torch", "gguf", "xllamacpp"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out
