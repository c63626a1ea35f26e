"""Lint an export the way vLLM will read it. Any error fails the command.

Rules (each a pure function of config.json, the safetensors names/shapes/dtypes and the folder's file list, so
they can be tested with hand-made bad configs):
- files: weights, config, tokenizer, chat template, generation config; processor/preprocessor configs for VL.
- scheme: 4 bits, group 128, symmetric (vLLM rejects asymmetric GPTQ), the format's own fields (GPTQ desc_act
  off, AWQ gemm without zero point, auto-round packing).
- modules: for every Linear in the checkpoint, decide "quantized or not" with vLLM's own rule for the format
  (GPTQ: modules_in_block_to_quantize or the checkpoint's int tensors, substring match; AWQ:
  modules_to_not_convert, substring match; auto-round (vLLM's INC): block_name_to_quantize prefix + extra_config;
  compressed-tensors: ignore list), after vLLM's renaming of the weights (Qwen3-VL: model.visual. -> visual. ...),
  and compare with what the checkpoint holds (qweight vs 16-bit weight) and with the intended layout.
  The known failure: vision tower / merger modules treated as quantized while stored 16-bit.
- shapes: quantized in/out features multiples of 32 (vLLM CPU W4A16 kernel tiles) and in_features a multiple of
  the group size; GPU Marlin tiles (out % 64, in % 128) are a warning.
Each format's own rules (its scheme fields, vLLM's module decision, its packed tensors' shapes, whether transformers
loads it through AutoRoundConfig) live in its module of core/formats; this file applies them to a folder.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from core import artifact
from core.errors import UserError
from core.formats import FORMATS, for_quant_method
from quantize.problems import Problem, error, warning
from quantize.recipes import GROUP_SIZE

FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
# vLLM's weight renaming for each architecture (its `hf_to_vllm_mapper`, prefix part)
VLLM_PREFIX_MAP = {
    "Qwen3VLForConditionalGeneration": {"model.visual.": "visual.", "lm_head.": "language_model.lm_head.",
                                        "model.language_model.": "language_model.model."},
    "Qwen3ForCausalLM": {},
}
CPU_TILE = 32  # vLLM CPU cpu_gemm_wna16 works on 32-wide tiles
MARLIN_N, MARLIN_K = 64, 128


# ---------------------------------------------------------------- names

def vllm_name(name: str, architecture: str) -> str:
    for old, new in VLLM_PREFIX_MAP.get(architecture, {}).items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def linears(tensors: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, dict]:
    """Linear-like modules in a checkpoint: name -> {quantized, in, out}. A module is quantized when it has a
    packed int weight of a registered format (qweight, weight_packed ...), 16-bit when it has a 2-D float weight;
    a packed module's in/out features come from the first format whose layout its tensors have."""
    packed = [f for f in FORMATS.values() if f.packed and f.packed_shape]
    weights = {f.packed[0] for f in packed}
    mods: dict[str, dict] = {}
    for name, (shape, dtype) in tensors.items():
        mod, _, leaf = name.rpartition(".")
        if leaf in weights:
            m = mods.setdefault(mod, {})
            m["quantized"] = True
        elif leaf == "weight" and len(shape) == 2 and dtype in ("F16", "BF16", "F32"):
            if mod.endswith(("embed_tokens", "pos_embed")):
                continue
            m = mods.setdefault(mod, {})
            m.setdefault("quantized", False)
            m["out"], m["in"] = shape
    for mod, m in mods.items():
        if m.get("quantized"):
            shape = next((s for f in packed if (s := f.packed_shape(tensors, mod))), None)
            if shape:
                m["out"], m["in"] = shape
    return mods


# ---------------------------------------------------------------- vLLM's decision per format

def vllm_quantized(fmt: str, qc: dict, name_v: str, checkpoint_quantized_v: set[str]) -> bool:
    """Would vLLM treat module `name_v` (vLLM naming) as quantized for this quantization_config? The rule is the
    format's that the config's quant_method names (core/formats)."""
    return for_quant_method(qc.get("quant_method")).vllm_quantized(qc, name_v, checkpoint_quantized_v)


def loader_quantized(qc: dict, name: str) -> bool:
    """Would transformers' AutoRound loader (`AutoRoundConfig`, which reads auto-round, GPTQ and AWQ configs)
    treat checkpoint module `name` as quantized? Without a block list it takes every repeated block, the
    vision tower's included."""
    blocks = qc.get("block_name_to_quantize") or qc.get("to_quant_block_names")
    if isinstance(blocks, str):
        blocks = blocks.split(",")
    if blocks:
        flat = [b for x in blocks for b in (x if isinstance(x, list) else [x])]
        q = any(name.startswith(b) for b in flat)
    else:
        q = re.search(r"\.(layers|blocks)\.\d+\.", name) is not None
    if not q:
        return False
    mib = qc.get("modules_in_block_to_quantize")
    if mib:
        flat = [x for s in mib for x in (s if isinstance(s, list) else [s])]
        if not any(re.search(n, name) for n in flat):
            return False
    for n in qc.get("modules_to_not_convert") or []:
        if re.search(n, name):
            return False
    extra = (qc.get("extra_config") or {}).get(name)
    return not (extra and int(extra.get("bits", 4)) >= 16)


def _map_config_names(qc: dict, architecture: str) -> dict:
    """Apply vLLM's renaming to the module lists in a quantization_config (its `apply_vllm_mapper`)."""
    qc = json.loads(json.dumps(qc))

    def m(x):
        return vllm_name(x, architecture) if isinstance(x, str) else [m(y) for y in x]

    for key in ("modules_in_block_to_quantize", "modules_to_not_convert"):
        if qc.get(key):
            qc[key] = m(qc[key])
    for key in ("block_name_to_quantize", "to_quant_block_names"):
        v = qc.get(key)
        if isinstance(v, str):
            qc[key] = ",".join(vllm_name(b, architecture) for b in v.split(","))
        elif isinstance(v, list):
            qc[key] = m(v)
    if qc.get("extra_config"):
        qc["extra_config"] = {vllm_name(k, architecture): v for k, v in qc["extra_config"].items()}
    if qc.get("ignore"):
        qc["ignore"] = [i if i.startswith("re:") else vllm_name(i, architecture) for i in qc["ignore"]]
    return qc


# ---------------------------------------------------------------- rules



def check_files(files: set[str], modality: str, require_card: bool = False) -> list[Problem]:
    out = []
    if "config.json" not in files:
        out.append(error("files", "config.json missing"))
    if not any(f.endswith(".safetensors") for f in files):
        out.append(error("files", "no .safetensors weights"))
    if any(f.startswith("model-") and f.endswith(".safetensors") for f in files) and \
            "model.safetensors.index.json" not in files:
        out.append(error("files", "sharded weights without model.safetensors.index.json"))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if f not in files:
            out.append(error("files", f"{f} missing"))
    if "chat_template.jinja" not in files and "chat_template.json" not in files and "tokenizer_config.json" in files:
        out.append(error("files", "no chat template (chat_template.jinja)"))
    if modality == "vl":
        for f in ("preprocessor_config.json", "processor_config.json"):
            if f not in files:
                out.append(error("files", f"{f} missing (vLLM and transformers need it for images)"))
    if require_card and "README.md" not in files:
        out.append(error("files", "README.md (model card) missing"))
    return out


def check_scheme(fmt: str, qc: dict | None) -> list[Problem]:
    """quant_method as AutoRound writes it for `fmt`, then the scheme rules of the format the config names."""
    if not qc:
        return [error("scheme", "config.json has no quantization_config")]
    out = []
    method, want = qc.get("quant_method"), FORMATS[fmt].quant_method if fmt in FORMATS else None
    if method != want:
        out.append(error("scheme", f"quant_method is {method!r}, expected {want!r} for {fmt}"))
    return out + for_quant_method(method).check_scheme(qc)


def check_modules(fmt: str, qc: dict, tensors: dict, architecture: str,
                  expected_4bit: list[str] | None = None) -> list[Problem]:
    out = []
    mods = linears(tensors)
    qc_v = _map_config_names(qc, architecture)
    ckpt_q_v = {vllm_name(n, architecture) for n, m in mods.items() if m.get("quantized")}
    wrong_q, wrong_16 = [], []
    for name, m in sorted(mods.items()):
        nv = vllm_name(name, architecture)
        vq = vllm_quantized(fmt, qc_v, nv, ckpt_q_v)
        if vq and not m.get("quantized"):
            wrong_q.append(name)
        elif not vq and m.get("quantized"):
            wrong_16.append(name)
    if wrong_q:
        out.append(error("modules", f"{len(wrong_q)} 16-bit module(s) that vLLM would load as quantized "
                                   f"(its config list does not exclude them), e.g. {', '.join(wrong_q[:3])}"))
    if wrong_16:
        out.append(error("modules", f"{len(wrong_16)} quantized module(s) that vLLM would load as 16-bit, "
                                   f"e.g. {', '.join(wrong_16[:3])}"))
    if for_quant_method(qc.get("quant_method")).autoround_config:
        lq = [n for n, m in sorted(mods.items()) if loader_quantized(qc, n) and not m.get("quantized")]
        l16 = [n for n, m in sorted(mods.items()) if not loader_quantized(qc, n) and m.get("quantized")]
        if lq:
            out.append(error("modules", f"{len(lq)} 16-bit module(s) that transformers (AutoRoundConfig) would load "
                                       f"as quantized (no block/module list bounds them), e.g. {', '.join(lq[:3])}"))
        if l16:
            out.append(error("modules", f"{len(l16)} quantized module(s) that transformers (AutoRoundConfig) would "
                                       f"load as 16-bit, e.g. {', '.join(l16[:3])}"))
    # fused groups (q/k/v, gate/up) must agree: vLLM loads them as one layer
    for name, m in mods.items():
        head, _, leaf = name.rpartition(".")
        for fused, parts in FUSED.items():
            if leaf == parts[0]:
                states = {mods.get(f"{head}.{p}", {}).get("quantized") for p in parts}
                if len(states) > 1:
                    out.append(error("modules", f"{head}.{fused}: parts {parts} are not all quantized or all 16-bit"))
    if expected_4bit is not None:
        got = {n for n, m in mods.items() if m.get("quantized")}
        exp = set(expected_4bit)
        if got - exp:
            out.append(error("layout", f"quantized but meant to stay 16-bit: {', '.join(sorted(got - exp)[:4])}"))
        if exp - got:
            out.append(error("layout", f"meant to be 4-bit but stored 16-bit: {', '.join(sorted(exp - got)[:4])}"))
    if not any(m.get("quantized") for m in mods.values()):
        out.append(error("modules", "no quantized module in the checkpoint"))
    for name, m in mods.items():
        if m.get("quantized") and any(t in name for t in ("visual", "vision")):
            out.append(error("layout", f"vision module {name} is quantized: the vision tower must stay 16-bit"))
        if m.get("quantized") and name.endswith("lm_head"):
            out.append(error("layout", "lm_head is quantized: it must stay 16-bit"))
    return out


def check_shapes(tensors: dict) -> list[Problem]:
    out = []
    bad_cpu, bad_group, bad_marlin = [], [], []
    for name, m in sorted(linears(tensors).items()):
        if not m.get("quantized"):
            continue
        i, o = m.get("in"), m.get("out")
        if i is None or o is None:
            out.append(error("shapes", f"{name}: cannot tell its shape (scales missing?)"))
            continue
        if i % GROUP_SIZE:
            bad_group.append(f"{name} in={i}")
        if i % CPU_TILE or o % CPU_TILE:
            bad_cpu.append(f"{name} {o}x{i}")
        if i % MARLIN_K or o % MARLIN_N:
            bad_marlin.append(f"{name} {o}x{i}")
    if bad_group:
        out.append(error("shapes", f"in_features not a multiple of group size {GROUP_SIZE}: {', '.join(bad_group[:3])}"))
    if bad_cpu:
        out.append(error("shapes", f"in/out features not multiples of {CPU_TILE} (vLLM CPU 4-bit kernel tiles): "
                                  f"{', '.join(bad_cpu[:3])}"))
    if bad_marlin:
        out.append(warning("shapes", f"not Marlin-tileable on GPU (out % {MARLIN_N}, in % {MARLIN_K}); vLLM falls back "
                                   f"to a slower kernel there: {', '.join(bad_marlin[:3])}"))
    return out


def check_dtypes(tensors: dict) -> list[Problem]:
    f32 = [n for n, (_, dt) in tensors.items() if dt == "F32"]
    if f32:
        return [warning("dtypes", f"{len(f32)} float32 tensors (16-bit expected), e.g. {f32[0]}")]
    return []


# ---------------------------------------------------------------- a folder

def read_tensors(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of every tensor in the folder's safetensors (headers only)."""
    return artifact.tensors(folder)


def lint_folder(folder: Path, fmt: str, modality: str, architecture: str,
                expected_4bit: list[str] | None = None, require_card: bool = False) -> list[Problem]:
    folder = Path(folder)
    spec = FORMATS.get(fmt)
    if spec is not None and spec.container == "gguf":  # llama.cpp's single file: its own rules (header, tensor types)
        from quantize.gguf import lint_folder as lint_gguf

        qtype = artifact.read_report(folder).get("gguf_type") or "q4_k_m"
        return lint_gguf(folder, qtype, architecture, require_card)
    files = {f.name for f in folder.iterdir() if f.is_file()}
    problems = check_files(files, modality, require_card)
    try:
        cfg = artifact.read_config(folder)
        qc = cfg.get("quantization_config")
        problems += check_scheme(fmt, qc)
        tensors = read_tensors(folder) if qc else {}
    except UserError as e:  # config.json or a weights header unreadable
        return problems + [error("files", e.what)]
    if qc:
        problems += check_modules(fmt, qc, tensors, architecture, expected_4bit)
        problems += check_shapes(tensors)
        problems += check_dtypes(tensors)
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.level == "error"]


def as_dicts(problems: list[Problem]) -> list[dict]:
    return [asdict(p) for p in problems]
