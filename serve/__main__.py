"""`python -m serve`: launch an OpenAI-compatible server (vLLM, or llama.cpp for GGUF) for a catalog alias, model
folder or Hub id. `--engine auto` picks llama.cpp for GGUF artifacts and, on CPUs without AMX, for the local GGUF
variant of the model when there is one (serve/engine.py); the choice and its reason are printed.

Prints the exact vLLM command (secrets masked), waits for /health, prints the base URL and an openai
snippet, then stays in the foreground until Ctrl-C / SIGTERM and stops the whole vLLM process tree.
Arguments after `--` go to vLLM verbatim.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time

from core.cli import add_common, print_catalog
from core.errors import UserError, run_cli
from serve.args import API_KEY_ENV, CPU_INT4_PATHS, VLLM_PYTHON_ENV
from serve.engine import ENGINES

EPILOG = f"""examples:
  python -m serve --model tiny-vl                       # a local tiny VL model on 127.0.0.1:8000
  python -m serve --model vl-gptq --device cuda --dry-run   # the GPU command for the published GPTQ model
  python -m serve --model vl-awq --host 0.0.0.0 --api-key $KEY --tensor-parallel-size 2
  python -m serve --model vl-gptq --dry-run --gpu 4xl40s --data-parallel-size auto   # 4 replicas, one endpoint
  python -m serve --plan vl-fp16 --gpu 2xrtx4090        # fits? TP / DP / PP, why, vLLM's argv, predicted tok/s
  python -m serve --model ./artifacts/tiny-vl-gptq -- --max-num-seqs 8   # extra vLLM arguments after --
  python -m serve --model tiny-text-gguf               # a GGUF artifact: llama.cpp's OpenAI server

env: {API_KEY_ENV} (default --api-key), {VLLM_PYTHON_ENV} (a Python that has vLLM)"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="alias (see --list), model folder, Hub id, or .gguf file")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="auto (default): llama.cpp for GGUF, and for a local GGUF variant on CPUs without AMX; "
                        "else vLLM")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the usable cores)")
    p.add_argument("--parallel", type=int, default=None,
                   help="llama.cpp slots: requests decoded together, each with --max-model-len tokens (default 4)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help=f"key clients must send (default: ${API_KEY_ENV}); required when --host is not loopback")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: the catalog's)")
    p.add_argument("--served-name", default=None, help="model name clients use (default: the alias)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs per model replica (GPU)")
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="pipeline stages (GPU)")
    p.add_argument("--data-parallel-size", "-dp", type=_dp_size, default=1,
                   help="model replicas behind one endpoint, vLLM balancing requests over them (GPU); auto: as many "
                        "as the visible GPUs hold (GPUs // (tensor x pipeline parallel))")
    p.add_argument("--distributed-executor-backend", choices=("mp", "ray"), default=None,
                   help="ray: spread over the machines of a running Ray cluster (multi-node)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90, help="GPU memory share for vLLM")
    p.add_argument("--kv-cache-gib", type=int, default=None, help="CPU KV-cache size (default: from model and RAM)")
    p.add_argument("--cpu-int4", choices=CPU_INT4_PATHS, default=None,
                   help="CPU, W4A16 checkpoints: vLLM's W4A8 kernel (int8 activations; auto picks it on AVX-512 VNNI "
                        "and AMX CPUs) or its wna16 kernel (bf16 math); default: $QWEN_W4_CPU_INT4 or auto")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="skip torch.compile / CUDA graphs (default: on for CPU, off for GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: what is here; cuda with --dry-run plans a GPU command on a machine without one")
    p.add_argument("--gpu", default=None, metavar="[Nx]CLASS",
                   help="with --dry-run: the GPUs to plan the command for (l40s, 4xl40s, \"2x RTX 4090\", or "
                        "\"NAME, MiB, X.Y\" as nvidia-smi prints it; see core/gpus.py)")
    p.add_argument("--vllm-python", default=None,
                   help=f"Python that has vLLM (default: ${VLLM_PYTHON_ENV} or this one)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for the server (default 900)")
    p.add_argument("--force", action="store_true", help="start even where a known limitation says it fails")
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command and exit")
    p.add_argument("--list", action="store_true", help="print the variant catalog and what is local")
    p.add_argument("--plan", nargs="?", const="", metavar="MODEL",
                   help="will MODEL fit here: weights, KV cache, image budget, longest context; prints and exits "
                        "(its options: python -m serve --plan --help)")
    add_common(p)
    return p


def _dp_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is neither a number of replicas nor auto") from None


def data_parallel(requested: int | str, hw, shards: int) -> int:
    """--data-parallel-size as vLLM gets it: `auto` is every visible GPU's share (at least one replica)."""
    return max(1, len(hw.gpus) // shards) if requested == "auto" else requested


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _Stop(signum)


def _hardware(device: str, gpus_needed: int, dry_run: bool, gpu: str | None = None):
    from core.hardware import Gpu, detect

    hw = detect()
    if gpu:
        if not dry_run or device == "cpu":
            raise UserError("--gpu plans a command for other GPUs", "add --dry-run (and leave out --device cpu)")
        from core.gpus import parse

        return dataclasses.replace(hw, gpus=tuple(parse(gpu)))
    if device == "cpu":
        return dataclasses.replace(hw, gpus=())
    if device == "cuda" and not hw.has_gpu:
        if not dry_run:
            raise UserError("--device cuda: no NVIDIA GPU is visible here", "use --dry-run to plan a GPU command")
        return dataclasses.replace(hw, gpus=tuple(Gpu("planned GPU", 80.0) for _ in range(max(1, gpus_needed))))
    return hw


def snippet(base_url: str, model: str, keyed: bool) -> list[str]:
    key = f'os.environ["{API_KEY_ENV}"]' if keyed else '"EMPTY"'
    imports = "import os; from openai import OpenAI" if keyed else "from openai import OpenAI"
    return [f'{imports}; client = OpenAI(base_url="{base_url}", api_key={key})',
            (f'print(client.chat.completions.create(model="{model}", messages=[{{"role": "user", '
             f'"content": "Hello!"}}]).choices[0].message.content)')]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    if any(a == "--plan" or a.startswith("--plan=") for a in argv) and "--doctor" not in argv:
        from serve.fit import main as plan_main
        return plan_main(argv)
    args = parser().parse_args(argv)
    if args.doctor:
        import serve
        return serve.doctor()
    if args.list:
        print_catalog()
        return 0
    if not args.model:
        raise UserError("--model is required",
                        "pass an alias (see `python -m serve --list`), a model folder or a Hub id")

    import serve
    from serve.engines import get
    from serve.process import ServerError

    shards = args.tensor_parallel_size * args.pipeline_parallel_size
    dp = args.data_parallel_size
    hw = _hardware(args.device, shards * (1 if dp == "auto" else dp), args.dry_run, args.gpu)
    dp = data_parallel(dp, hw, shards)
    lp = serve.plan(args.model, args.engine, hw=hw, host=args.host, port=args.port or None, api_key=args.api_key,
                    max_model_len=args.max_model_len, served_name=args.served_name, extra_args=extra,
                    python=args.vllm_python, force=args.force, tensor_parallel_size=args.tensor_parallel_size,
                    pipeline_parallel_size=args.pipeline_parallel_size, data_parallel_size=dp,
                    distributed_backend=args.distributed_executor_backend,
                    gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_gib=args.kv_cache_gib,
                    enforce_eager=args.enforce_eager, cpu_int4=args.cpu_int4, n_threads=args.threads,
                    parallel=args.parallel)
    # the engine line goes to stderr after every check: a refused start prints one error line and nothing else,
    # and stdout starts with the exact command
    if not args.dry_run:
        get(lp.engine).preflight(lp)
    print(f"engine: {lp.engine} — {lp.reason}", file=sys.stderr, flush=True)
    for note in lp.notes:
        print(note, file=sys.stderr, flush=True)
    print(f"$ {lp.command}", flush=True)
    if args.dry_run:
        return 0

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    srv = None
    t0 = time.monotonic()
    try:
        try:
            srv = serve.launch(lp, timeout_s=args.timeout, checks=False)
        except ServerError as e:
            _print_tail(e.tail)
            raise
        print(f"log: {srv.log_path}", flush=True)
        print(f"ready: {srv.base_url} serves '{srv.model}' (pid {srv.pid}, started in "
              f"{time.monotonic() - t0:.0f} s); Ctrl-C stops it", flush=True)
        for line in snippet(srv.base_url, srv.model, bool(srv.api_key)):
            print(f"  {line}", flush=True)
        while srv.proc.poll() is None:
            time.sleep(0.5)
        cause, todo = srv.failure()
        _print_tail(srv.log_tail())
        raise UserError(f"{get(lp.engine).LABEL} exited (code "
                        f"{srv.proc.returncode}) while serving '{srv.model}': {cause}",
                        f"{todo}; full log: {srv.log_path}", exit_code=1)
    except (KeyboardInterrupt, _Stop) as e:
        ready = srv is not None
        print(f"stopping the server{'' if ready else ' (interrupted while starting)'} ...", file=sys.stderr, flush=True)
        if srv is not None:
            srv.stop()
        print("stopped", file=sys.stderr, flush=True)
        if ready:
            return 0
        return 128 + (e.signum if isinstance(e, _Stop) else signal.SIGINT)
    finally:
        if srv is not None:
            srv.stop()


def _print_tail(tail: list[str]) -> None:
    if tail:
        print("last lines of the server's log:", file=sys.stderr)
        for line in tail:
            print(f"  | {line[:300]}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    run_cli(main)
