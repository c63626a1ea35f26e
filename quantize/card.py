"""The model card (README.md with Hub-style front matter) of an artifact, rendered from its quantization report."""
from __future__ import annotations

import json

from core.formats import FORMATS
from quantize import served_check

LICENSE = "apache-2.0"


def _yaml_list(items: list[str], indent: int = 0) -> str:
    pad = " " * indent
    return "\n".join(f"{pad}- {json.dumps(i)}" for i in items)


def _mb(b: int | None) -> str:
    return "?" if b is None else f"{b / 2**20:.2f} MiB"


def render(report: dict) -> str:
    """report: the dict written to quantization_report.json (see api.py)."""
    fmt = report["format"]
    alias = report["alias"]
    base = report["base"]
    rec = report["recipe"]
    cal = report["calibration"]
    lay = report["layout"]
    ver = report.get("verify") or {}
    lib = report["versions"]
    sizes = report["sizes"]
    modality = lay["modality"]
    pipeline = "image-text-to-text" if modality == "vl" else "text-generation"
    tags = ["w4a16", "int4", "autoround", fmt, "vllm", "qwen3" if modality == "text" else "qwen3-vl"]
    note = FORMATS[fmt].card_note if fmt in FORMATS else ""  # the format's own paragraph (core/formats)

    fm = [
        "---",
        f"base_model: {json.dumps(base['id'])}",
        "base_model_relation: quantized",
        f"library_name: {'transformers'}",
        f"pipeline_tag: {pipeline}",
        f"license: {LICENSE}",
        "tags:",
        _yaml_list(tags),
        "quantization:",
        "  method: AutoRound",
        "  scheme: W4A16",
        "  bits: 4",
        "  group_size: 128",
        "  sym: true",
        f"  format: {fmt}",
        f"  quant_method: {json.dumps(report['quant_method'])}",
        f"  recipe: {json.dumps(rec['name'])}",
        f"  iters: {rec['iters']}",
        f"  nsamples: {rec['nsamples']}",
        f"  seqlen: {rec['seqlen']}",
        f"  batch_size: {rec['batch_size']}",
        f"  calibration_sha256: {json.dumps(cal.get('sha256'))}",
        "libraries:",
        *[f"  {k}: {json.dumps(v)}" for k, v in lib.items()],
        "---",
    ]
    t = lay["totals"]
    body = [
        f"# {alias}",
        "",
        (f"`{base['id']}` quantized to **W4A16** (4-bit symmetric int weights, group size 128, 16-bit activations) "
         f"with [Intel AutoRound](https://github.com/intel/auto-round) {lib.get('auto-round', '')}, "
         f"exported in the **{fmt}** format (`quant_method: {report['quant_method']}`)."),
        "",
        "## Recipe",
        "",
        "| recipe | iters | nsamples | seqlen | batch size | lr | device |",
        "|---|---|---|---|---|---|---|",
        (f"| {rec['name']} | {rec['iters']} | {rec['nsamples']} | {rec['seqlen']} | {rec['batch_size']} | "
         f"{rec.get('lr') or 'auto'} | {report.get('device', 'cpu')} |"),
        "",
        (f"Calibration data: {cal['source']}; {cal['samples']} samples of {cal.get('tokens_per_sample')} tokens; "
         f"sha256 `{cal.get('sha256') or 'n/a (downloaded by AutoRound)'}`."),
        f"Tuning + export took {report['timings'].get('tune_and_export_s', '?')} s.",
        "",
        "## Layout",
        "",
        (f"{t['linears_4bit']} Linear modules of the language model's decoder layers are 4-bit; embeddings, norms, "
         f"lm_head{', the vision tower and its mergers' if modality == 'vl' else ''} stay 16-bit."),
        "",
        "| precision | modules | count | params | bf16 | W4A16 |",
        "|---|---|---|---|---|---|",
    ]
    for g in lay["groups"]:
        body.append(f"| {'4-bit' if g['kind'] == 'linear4' else '16-bit'} | `{g['group']}` | {g['count']} | "
                    f"{g['params']:,} | {_mb(g['bytes_bf16'])} | {_mb(g['bytes_w4a16'])} |")
    body += [
        "",
        (f"Weights on disk: **{_mb(sizes['artifact_bytes'])}** vs {_mb(sizes['base_bytes'])} for the 16-bit base "
         f"(x{sizes['ratio']})."),
        "",
        "## Quality (verify)",
        "",
    ]
    if ver:
        body += [
            (f"Greedy next-token distributions on {ver['prompts']} held-out prompts"
             f"{' (with an image)' if ver.get('with_image') else ''}, {ver['positions']} positions, compared with "
             "the 16-bit base (KL divergence base || model, lower is better; top-1 agreement, higher is better). "
             "`rtn` is plain round-to-nearest of the same weights on the same prompts: the gap is what AutoRound's "
             "tuning bought."),
            "",
            "| model | KL mean | KL max | top-1 agreement | loaded with |",
            "|---|---|---|---|---|",
        ]
        for key, r in ver["results"].items():
            if r.get("error"):
                body.append(f"| {r['name']} | failed | | | {r['error']} |")
            else:
                mark = " (this artifact)" if key == fmt else ""
                body.append(f"| {r['name']}{mark} | {r['kl_mean']:.5f} | {r['kl_max']:.5f} | {r['top1']:.1%} | "
                            f"{r['loader']} |")
        if ver.get("cross_format_kl"):
            body += ["", "Formats exported from the same tuning agree with each other: " +
                     ", ".join(f"{k} KL {v:.1e}" for k, v in ver["cross_format_kl"].items()) + "."]
    else:
        body.append("Not verified (`--no-verify`).")
    body += served_check.card_lines(report.get("served"), fmt)
    lint = report.get("lint") or []
    body += [
        "",
        "## Checks",
        "",
        "Lint (module lists as vLLM reads them, kernel tile shapes, symmetric scheme, files): " +
        ("passed" if not any(p["level"] == "error" for p in lint) else "FAILED") +
        (f"; warnings: {'; '.join(p['message'] for p in lint if p['level'] == 'warning')}" if
         any(p["level"] == "warning" for p in lint) else "") + ".",
        "",
        "## Use",
        "",
        "With this project (vLLM's OpenAI-compatible server, arguments chosen for the hardware):",
        "",
        "```bash",
        f"python -m serve --model {alias}",
        "```",
        "",
        "With plain vLLM:",
        "",
        "```bash",
        f"vllm serve {report.get('hub_id') or report['path']} --max-model-len {report.get('max_model_len', 8192)}"
        + (" --limit-mm-per-prompt '{\"image\":2}'" if modality == "vl" else ""),
        "# vLLM CPU build: python -m vllm.entrypoints.openai.api_server --model <this folder> --dtype bfloat16",
        "```",
        "",
        "With transformers:",
        "",
        "```python",
        "from transformers import AutoRoundConfig, " +
        ("AutoModelForImageTextToText as Model" if modality == "vl" else "AutoModelForCausalLM as Model"),
        (f"model = Model.from_pretrained(\"{report.get('hub_id') or report['path']}\", "
         "quantization_config=AutoRoundConfig(backend=\"auto\"))"),
        "```",
        "",
        *([note, ""] if note else []),
        f"Made with `{report['command']}`.",
        "",
    ]
    return "\n".join(fm) + "\n\n" + "\n".join(body)


def front_matter(text: str) -> dict:
    """Parse the simple front matter written above (for tests and tools): nested keys one level deep."""
    if not text.startswith("---\n"):
        return {}
    block = text[4:text.index("\n---", 4)]
    out: dict = {}
    cur = None
    for line in block.splitlines():
        if not line.strip():
            continue
        if line.startswith("  ") and cur is not None:
            s = line.strip()
            if s.startswith("- "):
                out[cur] = (out[cur] if isinstance(out[cur], list) else []) + [json.loads(s[2:])]
            else:
                k, _, v = s.partition(":")
                out[cur] = out[cur] if isinstance(out[cur], dict) else {}
                out[cur][k.strip()] = _val(v.strip())
        elif line.startswith("- ") and cur is not None:
            out[cur] = (out[cur] if isinstance(out[cur], list) else []) + [json.loads(line[2:])]
        else:
            k, _, v = line.partition(":")
            cur = k.strip()
            out[cur] = _val(v.strip()) if v.strip() else None
    return out


def _val(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def render_gguf(report: dict) -> str:
    """The card of a GGUF artifact (quantize/gguf.py's report)."""
    alias, base, g = report["alias"], report["base"], report["gguf"]
    gtype = report["gguf_type"]
    lib, sizes, ver = report["versions"], report["sizes"], report.get("verify") or {}
    rec, cal = report.get("recipe"), report.get("calibration")
    quantized = gtype != "bf16"
    mm = report.get("mmproj")
    fm = [
        "---",
        f"base_model: {json.dumps(base['id'])}",
        f"base_model_relation: {'quantized' if quantized else 'finetune'}",
        "library_name: gguf",
        f"pipeline_tag: {'image-text-to-text' if mm else 'text-generation'}",
        f"license: {LICENSE}",
        "tags:",
        _yaml_list(["gguf", "llama.cpp", gtype, "qwen3_vl" if mm else "qwen3"] + (["autoround"] if quantized else [])),
        "quantization:",
        f"  method: {'AutoRound' if quantized else 'none (16-bit)'}",
        "  format: gguf",
        f"  gguf_type: {gtype}",
        f"  file: {json.dumps(report['file'])}",
        "libraries:",
        *[f"  {k}: {json.dumps(v)}" for k, v in lib.items()],
        "---",
    ]
    how = (f"quantized to **{gtype.upper()}** with [Intel AutoRound](https://github.com/intel/auto-round) "
           f"{lib.get('auto-round', '')} (scheme `GGUF:{gtype.upper()}`, recipe {rec['name']}, iters {rec['iters']}, "
           f"nsamples {rec['nsamples']}, seqlen {rec['seqlen']}); calibration: {cal['source']}, sha256 "
           f"`{cal.get('sha256') or 'n/a'}`" if quantized and rec and cal
           else "converted to a **16-bit (BF16)** GGUF with llama.cpp's converter (no quantization)")
    types = ", ".join(f"{k}: {v}" for k, v in sorted(g["tensor_types"].items()))
    body = [
        f"# {alias}",
        "",
        (f"`{base['id']}` {how}, for [llama.cpp](https://github.com/ggml-org/llama.cpp) "
         f"(verified with xllamacpp {lib.get('xllamacpp', '')}, llama.cpp's own server)."),
        "",
        (f"File: `{report['file']}` — architecture `{g['architecture']}`, file type {g['file_type']}, "
         f"tensor types {types}; tokenizer pre-splitter `{g['tokenizer_pre']}`."),
        (f"Size: **{_mb(sizes['artifact_bytes'])}** vs {_mb(sizes['base_bytes'])} for the 16-bit safetensors base "
         f"(x{sizes['ratio']}){' (both files)' if mm else ''}."),
        *([f"Vision projector: `{mm['file']}` ({_mb(mm['bytes'])}, `{mm['projector_type']}`, 16-bit: "
           + ", ".join(f"{k}: {v}" for k, v in sorted(mm["tensor_types"].items()))
           + ") — the vision tower and merger, unquantized, loaded by llama.cpp's mtmd beside the language model."]
          if mm else []),
        "",
        "## Quality (verify)",
        "",
    ]
    r = (ver.get("results") or {}).get("gguf")
    if r and not r.get("error"):
        rtn = (ver.get("results") or {}).get("rtn") or {}
        body += [
            f"Served numbers: llama.cpp's own server (the one `python -m serve` runs for GGUF) returned its "
            f"next-token distributions at {r['positions']} greedy positions of the 16-bit base "
            + ("on text prompts (the language model)" if mm else f"on {ver['prompts']} held-out prompts")
            + ", teacher-forced, compared with the base in transformers:",
            "",
            "| model | KL mean | KL max | top-1 agreement | loaded with |",
            "|---|---|---|---|---|",
            f"| {alias} (this file) | {r['kl_mean']:.5f} | {r['kl_max']:.5f} | {r['top1']:.1%} | {r['loader']} |",
        ]
        if rtn and not rtn.get("error"):
            body.append(f"| W4A16 g128 RTN (reference) | {rtn['kl_mean']:.5f} | {rtn['kl_max']:.5f} | "
                        f"{rtn['top1']:.1%} | {rtn['loader']} |")
        vis = ver.get("vision")
        if vis:
            body += ["", (f"Vision: llama.cpp turns the test picture into {vis['image_tokens']} image tokens "
                          f"(transformers' processor: {vis['image_tokens_transformers']}) and answers it "
                          f"({vis['answer_tokens']} tokens) through `{vis['mmproj']}`.")]
    else:
        body.append("Not verified (`--no-verify`).")
    body += [
        "",
        "## Use",
        "",
        "```bash",
        f"python -m serve --model {alias} --engine llamacpp      # OpenAI API via llama.cpp's server",
        f"llama-server -m {report['file']} -c {report.get('max_model_len', 2048)}"
        + (f" --mmproj {mm['file']}" if mm else "") + "      # llama.cpp's own server binary, where installed",
        "```",
        "",
        f"Made with: `{report['command']}`",
        "",
    ]
    return "\n".join(fm + [""] + body)
