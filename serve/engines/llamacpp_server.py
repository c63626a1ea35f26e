"""The process llama.cpp's own C++ server runs in: `python -m serve.engines.llamacpp_server --model F.gguf ...`.

llama.cpp's server (continuous batching over parallel slots, `image_max_tokens`, token usage in the stream,
`/metrics`, API keys) comes from PyPI's prebuilt `xllamacpp`, which runs it inside a Python process. This module maps
its few flags onto xllamacpp's `CommonParams`, starts the server and waits for SIGTERM / SIGINT; serve/process.py
starts, watches and stops it like any engine. The API key arrives in env LLAMA_API_KEY (llama-server's own name for
it), never on argv. serve/engines/llamacpp.py builds the command (a pure function) from serve's plan.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

KEY_ENV = "LLAMA_API_KEY"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve.engines.llamacpp_server", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the language model's .gguf")
    p.add_argument("--mmproj", default=None, help="a VL model's vision projector (mmproj-*.gguf)")
    p.add_argument("--alias", required=True, help="the model name clients use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--parallel", type=int, default=1, help="slots: requests decoded together")
    p.add_argument("--ctx-per-slot", type=int, required=True, help="context (prompt + answer) of each slot, tokens")
    p.add_argument("--threads", type=int, required=True, help="CPU threads for decode and prompt processing")
    p.add_argument("--image-max-tokens", type=int, default=-1, help="image tokens per picture at most (mtmd)")
    p.add_argument("--batch", type=int, default=2048, help="logical batch (n_batch)")
    p.add_argument("--ubatch", type=int, default=512, help="physical batch (n_ubatch)")
    return p.parse_args(argv)


def params(a: argparse.Namespace):
    """xllamacpp.CommonParams for the parsed flags (the context is llama.cpp's total: slots x context per slot)."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    if a.mmproj:
        p.mmproj.path = a.mmproj
    else:
        p.no_mmproj = True
    p.model_alias = {a.alias}
    p.hostnames = [a.host]
    p.port = a.port
    p.n_parallel = a.parallel
    p.n_ctx = a.parallel * a.ctx_per_slot
    p.kv_unified = False  # each slot owns ctx_per_slot tokens of KV cache, as serve --plan counts it
    p.cont_batching = True
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.n_batch, p.n_ubatch = a.batch, a.ubatch
    p.image_max_tokens = a.image_max_tokens
    p.fit_params = False  # the plan decides the context; llama.cpp must not shrink it on its own
    p.cache_ram_mib = 0  # no host-RAM prompt cache beside the KV cache (default 8 GiB): memory stays as planned
    p.endpoint_metrics = True
    p.offline = True
    p.n_gpu_layers = 0
    key = os.environ.get(KEY_ENV)
    if key:
        p.api_keys = [key]
    return p


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import xllamacpp

    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    print(f"xllamacpp {xllamacpp.__version__}: {xllamacpp.get_system_info().strip()}", file=sys.stderr, flush=True)
    server = xllamacpp.Server(params(a))
    print(f"llama.cpp server listening on {server.listening_address}", file=sys.stderr, flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
