"""`python -m bench`: memory, speed and quality of every variant against the 16-bit model, as a report.

Each model is served in turn (vLLM through `serve`, one server at a time, stopped after; or an
existing `--endpoint`; or transformers in process with `--engine transformers`), loaded with
fixed-length streaming requests at each concurrency level, asked the same greedy questions, and
measured; report.json, report.md and PNG plots land in `--out`. A variant that fails is recorded
with its reason and the others still report.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

from bench.workload import QUALITY_PROMPTS
from core.cli import add_common
from core.errors import UserError, run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", help="comma-separated aliases / model folders; the first 16-bit one is the baseline "
                                     "(e.g. bench-text,bench-text-gptq,bench-text-awq,bench-text-autoround)")
    p.add_argument("--endpoint", default="",
                   help="use running servers instead of starting them: URL (every model) or ALIAS=URL pairs, comma-separated")
    p.add_argument("--api-key", help="API key of --endpoint servers")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm",
                   help="vllm: vLLM's OpenAI server (default); transformers: in process, for machines without vLLM")
    p.add_argument("--concurrency", default="1,4", help="concurrency levels (comma-separated; default 1,4)")
    p.add_argument("--prompts", type=int, default=8, help="requests per level (at least one per slot; default 8)")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request (default 128)")
    p.add_argument("--output-len", type=int, default=64, help="output tokens per request, forced (default 64)")
    p.add_argument("--seed", type=int, help="where the prompts start in the local text (default: random per run, "
                                            "so a long-running server's prefix cache never serves a repeat)")
    p.add_argument("--image", help="image for the with-image run of VL models (default: a built-in test picture)")
    p.add_argument("--quality-tokens", type=int, default=32, help="max tokens of each greedy quality answer (default 32)")
    p.add_argument("--quality-prompts", type=int, default=len(QUALITY_PROMPTS),
                   help=f"how many of the {len(QUALITY_PROMPTS)} fixed quality prompts to ask (default all)")
    p.add_argument("--quality", action="store_true",
                   help="served quality: teacher-forced top-20 KL, top-1 agreement and perplexity of every variant vs "
                        "its family's 16-bit model, through the served endpoint, text and image positions "
                        "(bench/served_quality.py); runs the 16-bit models first")
    p.add_argument("--out", help="report folder (default reports/bench-<date-time>)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--notes", help="a markdown file with findings, shown at the top of report.md")
    p.add_argument("--render", metavar="DIR", help="re-render report.md and plots of DIR/report.json (with --notes) and exit")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra vLLM argument, repeatable (e.g. --server-arg=--max-num-seqs=8)")
    p.add_argument("--force", action="store_true",
                   help="start servers even where serve knows they will fail (e.g. W4A16 on a CPU without the kernel)")
    p.add_argument("--cpu-int4", default="",
                   help="vLLM on CPU: measure each W4A16 variant with these int4 paths, as ALIAS@PATH variants "
                        "(e.g. w4a8,w4a16; default: serve's choice, see `python -m serve --help`)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="transformers engine: compiled static-cache decoding (auto: on)")
    p.add_argument("--backend", default="auto", help="transformers engine: AutoRound kernel backend for W4 (default auto)")
    p.add_argument("--threads", type=int,
                   help="CPU threads: torch and AutoRound's kernels (transformers), llama.cpp's n_threads and the cores "
                        "vLLM's CPU worker is bound to (servers; default: each engine's own choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--gpu-check", action="store_true",
                   help="bf16 vs AutoRound W4A16 (RTN) on the Qwen3-VL-8B text shape with random weights, built on the "
                        "GPU, transformers engine, batch 1 and 16 (bench/gpu_check.py; uses --out, --overwrite, "
                        "--compile, --backend, --threads)")
    p.add_argument("--gpu-check-shape", choices=("8b", "small"), default="8b",
                   help="--gpu-check: the real 8B text shape (GPU) or a tiny one of the same architecture (CPU test)")
    p.add_argument("--predict", action="store_true",
                   help="no server: predicted batch-1 decode tok/s of --models on --gpu (roofline x an efficiency "
                        "measured on an H100, bench/predict.py), written as a report (uses --out, --overwrite)")
    p.add_argument("--gpu", metavar="[Nx]CLASS",
                   help="--predict: the GPUs (a class of core/gpus.py: l40s, 4xl40s, \"2x RTX 4090\", h100 ...)")
    p.add_argument("--nodes", type=int, default=1, help="--predict: machines with those GPUs each (default 1)")
    p.add_argument("--table", action="store_true",
                   help="--predict: print the README's 'Which GPU, how many' table (every GPU class, the seed models)")
    p.add_argument("--gpu-check-budget", type=float, default=480.0, metavar="SECONDS",
                   help="--gpu-check: skip a batch level that would end later than this after the start, judged by the "
                        "longest level so far (default 480)")
    add_common(p)
    return p


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise UserError(f"{what} must be positive integers separated by commas, got '{text}'",
                        f"e.g. --{what} 1,4,16")
    return sorted(set(vals))


def _cpu_int4(text: str) -> list[str]:
    from serve.args import CPU_INT4_PATHS

    paths = [x.strip().lower() for x in text.split(",") if x.strip()]
    bad = [x for x in paths if x not in CPU_INT4_PATHS or x == "auto"]
    if bad:
        raise UserError(f"unknown --cpu-int4 path '{bad[0]}'", "use w4a8, w4a16 or both: --cpu-int4 w4a8,w4a16")
    return list(dict.fromkeys(paths))


def _endpoints(text: str, models: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        if "=" in item and not item.startswith(("http://", "https://")):
            alias, url = item.split("=", 1)
            if alias not in models:
                raise UserError(f"--endpoint names {alias}, which is not in --models",
                                "use ALIAS=URL with an alias from --models, or one URL for every model")
            out[alias] = url
        else:
            if "*" in out:
                raise UserError("--endpoint has two URLs for every model", "pass one URL, or ALIAS=URL pairs")
            out["*"] = item
    return out


def _notes(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such notes file: {path}", "pass a markdown file with --notes")
    return p.read_text()


def render_only(args) -> int:
    from bench.report import write

    d = Path(args.render)
    try:
        report = json.loads((d / "report.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{d} has no report.json", "pass a folder written by `python -m bench`") from None
    except ValueError as e:
        raise UserError(f"{d / 'report.json'} is not valid JSON ({e})", "re-run the benchmark") from None
    notes = _notes(args.notes)
    if notes is not None:
        report["notes"] = notes
    write(report, d, overwrite=True)
    print(f"re-rendered {d}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.doctor:
        import serve

        return serve.doctor()
    if args.render:
        return render_only(args)
    if args.gpu_check:
        from bench.gpu_check import main as gpu_check

        return gpu_check(args, argv)
    if args.predict:
        from bench.predict_report import main as predict

        return predict(args, argv)
    if not args.models:
        raise UserError("no models given", "pass --models ALIAS[,ALIAS...] (see `python -m serve --list`)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(set(models)) != len(models):
        raise UserError("--models lists a model twice", "name each model once")
    for name, val in (("prompts", args.prompts), ("input-len", args.input_len), ("output-len", args.output_len),
                      ("quality-tokens", args.quality_tokens), ("quality-prompts", args.quality_prompts)):
        if val < 1:
            raise UserError(f"--{name} must be at least 1, got {val}", f"pass a positive --{name}")
    conc = _ints(args.concurrency, "concurrency")
    endpoints = _endpoints(args.endpoint, models)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}", "pass a positive --threads")
        if args.engine == "transformers":
            # before torch and AutoRound's kernel library load: that library runs its own OpenMP pool,
            # which reads OMP_NUM_THREADS and ignores torch.set_num_threads
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
        else:  # servers: llama.cpp gets n_threads; vLLM's CPU worker is bound to that many cores
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")
    if args.cpu_int4 and args.engine != "vllm":
        raise UserError("--cpu-int4 picks vLLM's CPU kernels", "drop --cpu-int4, or use --engine vllm")
    if args.quality and args.engine != "vllm":
        raise UserError("--quality scores served endpoints (their logprobs)", "drop --quality, or use --engine vllm")
    if endpoints and args.engine != "vllm":
        raise UserError("--endpoint works with --engine vllm only", "drop --endpoint, or use --engine vllm")
    notes = _notes(args.notes)
    if args.image:
        from bench.workload import load_image

        load_image(args.image)  # a bad image is a user error before any server starts
    if args.engine == "vllm" and not all(m in endpoints for m in models) and "*" not in endpoints:
        from core.hardware import vllm_version

        if vllm_version() is None:
            raise UserError("vLLM is not installed here",
                            "install it (`make venv`), pass --endpoint URL of a running server, or use --engine transformers")
    out = Path(args.out) if args.out else Path("reports") / f"bench-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists", "pass another --out, or --overwrite")

    from bench.report import derive, headline_table, write
    from bench.runner import Runner, Settings

    settings = Settings(models=models, engine=args.engine, endpoints=endpoints, api_key=args.api_key,
                        concurrency=conc, prompts=args.prompts, input_len=args.input_len, output_len=args.output_len,
                        image=args.image, quality_tokens=args.quality_tokens,
                        quality_prompts=min(args.quality_prompts, len(QUALITY_PROMPTS)), served_quality=args.quality,
                        server_args=list(args.server_arg), force=args.force, seed=args.seed, compile=args.compile, backend=args.backend, threads=args.threads,
                        cpu_int4=_cpu_int4(args.cpu_int4), debug=args.debug)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="req", desc="bench", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    try:
        log = (lambda msg: bar.write(msg, file=sys.stderr)) if bar is not None else None
        report = Runner(settings, argv, bar=bar, log=log).run()
    finally:
        if bar is not None:
            bar.close()
    if notes:
        report["notes"] = notes
    write(report, out, overwrite=args.overwrite)
    print("\n".join(headline_table(report, derive(report))))
    ok = [v for v in report["variants"] if v["status"] == "ok"]
    failed = [v for v in report["variants"] if v["status"] != "ok"]
    for v in failed:
        print(f"failed: {v['alias']}: {v['reason']}")
    print(f"report: {out}/report.md ({len(ok)} of {len(report['variants'])} variants ran)")
    if not ok:
        raise UserError("every variant failed (reasons above and in the report)", "fix the first reason and re-run",
                        exit_code=1)
    return 0


if __name__ == "__main__":
    run_cli(main)
