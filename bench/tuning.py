"""`python -m bench.tuning`: what AutoRound's tuning costs per block at a real shape, measured, not guessed.

A copy of a real-shape family (`shape-text`, `shape-vl`'s language model is not sliced) cut to `--blocks` decoder
blocks (same widths, vocab and tokenizer; random weights written shard by shard) is quantized twice through
`python -m quantize` with the same calibration settings: once with `--iters 1` (calibration, caching, the tuning
path once, export; `--iters 0` is no baseline: AutoRound then runs its slower optimized RTN) and once with
`--iters N`. (wall(N) - wall(1)) / (blocks x (N - 1)) is the cost of one tuning iteration of one block at
that batch size and sequence length; the report scales it to every recipe (iters x blocks of the full model x
tokens per step relative to the measurement: an estimate, said so). Writes report.json and report.md to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core import artifact, catalog, shapes
from core.errors import UserError, run_cli

FAMILIES = {"shape-text": "qwen3-4b-instruct-2507"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "tiny_model.json")  # tiny_model.json: a local family, calibrated on the local corpus


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shape-text", choices=sorted(FAMILIES), help="real-shape family (default shape-text)")
    p.add_argument("--blocks", type=int, default=1, help="decoder blocks kept (default 1)")
    p.add_argument("--iters", type=int, default=30, help="tuning iterations of the measured run (default 30)")
    p.add_argument("--nsamples", type=int, default=8, help="calibration samples (default 8)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per sample (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="samples per tuning step (default 4)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def sliced(family: str, blocks: int, work: Path) -> Path:
    """`family` cut to `blocks` decoder blocks, in work/: config and tokenizer of the family's folder."""
    src = catalog.resolve(family).location
    cfg = artifact.read_config(src)
    ids = {"bos": cfg.get("bos_token_id"), "eos": cfg.get("eos_token_id"), "pad": cfg.get("pad_token_id")}
    config = shapes.text_config(overrides={"num_hidden_layers": blocks}, ids=ids)
    out = work / f"{family}-{blocks}blocks"
    shapes.write_checkpoint(config, out)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, out / name)
    return out


def quantize_once(model: Path, iters: int, a, out: Path) -> dict:
    cmd = [sys.executable, "-m", "quantize", "--model", str(model), "--formats", "autoround", "--recipe", "light",
           "--iters", str(iters), "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--batch-size",
           str(a.batch_size), "--no-verify", "--output", str(out), "--overwrite", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"quantize --iters {iters} failed (exit {r.returncode}): {tail[0][:200]}",
                        "run the command shown in report.json by hand to see the whole error")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    return {"iters": iters, "wall_s": round(wall, 1), "peak_rss_bytes_so_far": peak, "command": cmd}


def report(a, runs: list[dict], full_blocks: int) -> dict:
    from quantize import recipes

    one, tuned = runs
    per = (tuned["wall_s"] - one["wall_s"]) / (a.blocks * (tuned["iters"] - one["iters"]))
    if per <= 0:
        raise UserError(f"--iters {tuned['iters']} took no longer than --iters {one['iters']} "
                        f"({tuned['wall_s']} s vs {one['wall_s']} s): too few iterations to measure",
                        "raise --iters (e.g. --iters 50)")
    step_tokens = a.batch_size * a.seqlen
    est = {}
    for r in recipes.RECIPES.values():
        if not r.iters:
            continue
        scale = (r.batch_size * r.seqlen) / step_tokens
        est[r.name] = {"iters": r.iters, "batch_size": r.batch_size, "seqlen": r.seqlen, "nsamples": r.nsamples,
                       "tokens_per_step_x": round(scale, 2),
                       "hours_estimate": round(per * scale * r.iters * full_blocks / 3600, 2)}
    return {"model": a.model, "blocks_measured": a.blocks, "full_blocks": full_blocks,
            "settings": {"iters": a.iters, "nsamples": a.nsamples, "seqlen": a.seqlen, "batch_size": a.batch_size},
            "runs": runs, "seconds_per_block_iteration": round(per, 3),
            "recipes_estimate": est,
            "estimate_note": "per block-iteration cost x (batch_size x seqlen of the recipe / of the measurement) x "
                             "iters x blocks: tuning cost grows about linearly in the tokens of a step; calibration "
                             "and export are not included"}


def markdown(r: dict) -> str:
    s = r["settings"]
    L = [f"# AutoRound tuning time: {r['model']} at its real widths", "",
         (f"Measured on {r['blocks_measured']} of its {r['full_blocks']} decoder blocks, batch {s['batch_size']} x "
          f"{s['seqlen']} tokens, {s['nsamples']} samples, this machine's CPU."), "",
         "| run | wall s |", "|---|---:|"]
    L += [f"| --iters {x['iters']} | {x['wall_s']} |" for x in r["runs"]]
    L += ["", f"One tuning iteration of one block: **{r['seconds_per_block_iteration']} s**.", "",
          "| recipe | iters | batch x seqlen | estimate for the whole model |", "|---|---:|---:|---:|"]
    for name, e in r["recipes_estimate"].items():
        L.append(f"| {name} | {e['iters']} | {e['batch_size']} x {e['seqlen']} | {e['hours_estimate']} h |")
    L += ["", f"Estimate: {r['estimate_note']}.", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.blocks < 1 or a.iters < 2:
        raise UserError("--blocks must be at least 1 and --iters at least 2", "e.g. --blocks 1 --iters 30")
    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise UserError(f"{out} exists", "pass --overwrite or another --out")
    full_blocks = int(shapes.config_dict(FAMILIES[a.model])["num_hidden_layers"])
    work = Path(catalog.artifact_root()) / f".tuning-{os.getpid()}"
    try:
        model = sliced(a.model, a.blocks, work)
        runs = [quantize_once(model, i, a, work / f"out-{i}") for i in (1, a.iters)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r = report(a, runs, full_blocks)
    with artifact.atomic_folder(out) as tmp:
        (tmp / "report.json").write_text(json.dumps(r, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    run_cli(main)
