"""`python -m quantize`: a 16-bit Qwen3 / Qwen3-VL model -> W4A16 artifacts (AutoRound, GPTQ, AWQ,
compressed-tensors) and, for text models, GGUF for llama.cpp; each linted, verified and carrying a model card.

Flags are spelled like AutoRound's own CLI where it has one (`--iters --nsamples --seqlen --batch-size --dataset
--device --device-map --formats`); underscore spellings are accepted too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Busy-waiting OpenMP threads make every torch op crawl (20x measured) whenever the cores are shared with other
# busy processes; passive waiting costs next to nothing on an idle machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core import catalog
from core.cli import add_common
from core.errors import run_cli
from quantize import recipes
from quantize.options import GGUF_TYPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m quantize",
        description="Quantize a Qwen3 / Qwen3-VL model to W4A16 (4-bit symmetric weights, group 128) with "
                    "AutoRound; write one complete, linted, verified artifact per format.",
        epilog="recipes:\n" + recipes.table_text() + "\n\nexample: python -m quantize --model tiny-vl "
               "--formats autoround,gptq,awq --recipe light",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="alias (python -m serve --list), model folder, or Hub id of the 16-bit base")
    p.add_argument("--formats", "--format", default="autoround,gptq,awq",
                   help=f"comma-separated: {','.join(catalog.QUANT_FORMATS)} (default: autoround,gptq,awq)")
    p.add_argument("--recipe", default="default", choices=list(recipes.RECIPES), help="tuning recipe (default: default)")
    p.add_argument("--gguf-type", "--gguf_type", dest="gguf_type", choices=list(GGUF_TYPES),
                   help="type of the gguf format's file: q4_k_m (default), q4_0, or bf16 (16-bit, for comparisons; "
                        "written to <family>-gguf-bf16)")
    g = p.add_argument_group("recipe overrides (AutoRound's names)")
    g.add_argument("--iters", "--iter", type=int, help="tuning iterations per block (0: round-to-nearest)")
    g.add_argument("--nsamples", "--nsample", type=int, help="calibration samples")
    g.add_argument("--seqlen", "--seq-len", "--seq_len", type=int, help="tokens per calibration sample")
    g.add_argument("--batch-size", "--batch_size", "--bs", dest="batch_size", type=int, help="tuning batch size")
    g.add_argument("--lr", type=float, help="learning rate (default: AutoRound's, 1/iters)")
    g.add_argument("--dataset", help="local calibration file: .txt (paragraphs), .jsonl / .json (text or "
                                     "messages; image-text records for VL). Default: a local corpus for tiny "
                                     "models, AutoRound's default dataset for real ones")
    g.add_argument("--asym", action="store_true", help=argparse.SUPPRESS)  # refused with a clear error
    g.add_argument("--bits", type=int, help=argparse.SUPPRESS)
    g.add_argument("--group-size", "--group_size", dest="group_size", type=int, help=argparse.SUPPRESS)
    g.add_argument("--scheme", help=argparse.SUPPRESS)
    o = p.add_argument_group("where and how")
    o.add_argument("--output", "--output-dir", "--output_dir", dest="output",
                   help="parent folder of the artifacts (default: the artifact root)")
    o.add_argument("--overwrite", action="store_true", help="replace existing artifacts (only once the new ones pass)")
    o.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    o.add_argument("--device-map", "--device_map", "--devices", dest="device_map",
                   help="AutoRound's device map for multi-GPU tuning, passed through (e.g. 0,1,2 or auto)")
    o.add_argument("--no-verify", dest="verify", action="store_false", help="skip the reload/KL check (not advised)")
    o.add_argument("--verify-served", action="store_true",
                   help="also serve the base and each export as `serve` would here (vLLM; one start-up each) and "
                        "put their teacher-forced KL / top-1 through the endpoint in the model card (GGUF: verify already "
                        "scores it on llama.cpp's server)")
    o.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="ORG/NAME",
                   help="upload the artifacts (several formats: ORG/NAME-<FORMAT>)")
    o.add_argument("--json", action="store_true", help="print {format: folder} and the verify numbers as JSON")
    o.add_argument("--list-recipes", action="store_true", help="print the recipe table and exit")
    add_common(p)
    return p


def _sigterm_as_interrupt() -> None:
    """SIGTERM cleans up like Ctrl-C (the temp folder is removed; no partial output)."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling main in a worker thread)
        pass


def main(argv: list[str] | None = None) -> int:
    _sigterm_as_interrupt()
    p = build_parser()
    args = p.parse_args(argv)
    if args.doctor:
        from core.doctor import report

        return report()
    if args.list_recipes:
        print(recipes.table_text())
        return 0
    if not args.model:
        from core.errors import UserError

        raise UserError("--model is required", "e.g. --model tiny-vl (aliases: python -m serve --list)")
    from quantize.api import read_report, run
    from quantize.options import QuantizeOptions

    cmd = "python -m quantize " + " ".join(sys.argv[1:] if argv is None else argv)
    out = run(QuantizeOptions.from_args(args, command=cmd))  # parsed and checked once, read by every step
    if args.json:
        print(json.dumps({f: {"path": str(d), "verify": read_report(d).get("verify")} for f, d in out.items()},
                         indent=2))
    else:
        for f, d in out.items():
            print(f"{f:<20} {d}")
    return 0


if __name__ == "__main__":
    run_cli(main)
