"""`python -m demo`: a Gradio image chat with a served model, or two models side by side.

    python -m demo                                   # tiny-vl on a CPU, vl-autoround with a GPU
    python -m demo --model vl-gptq --compare         # W4A16 next to its 16-bit base (vl-fp16)
    python -m demo --endpoint http://127.0.0.1:8000  # a server that is already running

Servers it needs are started through `serve` (bound to 127.0.0.1) and stopped when the demo ends
(Ctrl-C, SIGTERM, SIGHUP). The page binds 127.0.0.1 unless --host says otherwise; on any other
address, or with --share, a login is required (--auth USER:PASS, or --api-key KEY).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import ExitStack

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from core.cli import add_common
from core.errors import UserError, run_cli
from serve.engine import ENGINES

BASE = "\0base"  # --compare without a value: the 16-bit base of --model
GPU_SHARE = 0.42  # GPU memory fraction per server when the demo starts two on one GPU


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="ALIAS",
                   help="alias, model folder or Hub id to serve (default: vl-autoround with a GPU, tiny-vl on a "
                        "CPU); with --endpoint, the model name served there (default: ask the server)")
    p.add_argument("--compare", nargs="?", const=BASE, metavar="ALIAS",
                   help="send every message to ALIAS too and show both answers side by side "
                        "(no ALIAS: the 16-bit base of --model)")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="engine of the servers started here, as `python -m serve --engine` (default auto: "
                        "llama.cpp for GGUF variants and, on CPUs without AMX, a local GGUF variant; else vLLM)")
    p.add_argument("--endpoint", metavar="URL",
                   help="use this running OpenAI-compatible server for --model instead of starting one")
    p.add_argument("--compare-endpoint", metavar="URL",
                   help="use this running server for the compared model (implies compare mode)")
    p.add_argument("--api-key", metavar="KEY",
                   help="API key for the servers (sent to endpoints, required by servers started here; "
                        "default $QWEN_W4_API_KEY); on an exposed page it is also the login password")
    p.add_argument("--host", default="127.0.0.1", help="address the page binds to (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port of the page (default 7860; 0: any free port)")
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login for the page")
    p.add_argument("--max-tokens", type=int, default=256, help="longest answer in tokens (default 256)")
    p.add_argument("--max-image-mb", type=float, default=10, help="largest image accepted (default 10 MiB)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one answer may take (default 120)")
    add_common(p)
    return p


# ---------------------------------------------------------------- checks before anything starts

def parse_auth(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, pw = value.partition(":")
    if not sep or not user or not pw:
        raise UserError(f"--auth must be USER:PASS, got '{value}'", "e.g. --auth alice:s3cret")
    return user, pw


def login(auth: tuple[str, str] | None, api_key: str | None, exposed: bool, host: str):
    """What Gradio's `auth=` gets: --auth, else (exposed) any user name with the API key as password."""
    if auth:
        return auth
    if not exposed:
        return None
    if api_key:
        return lambda _user, password: password == api_key
    where = "--share" if host_is_loopback(host) else f"--host {host}"
    raise UserError(f"{where} exposes the demo beyond this machine without a login",
                    "add --auth USER:PASS (or --api-key KEY, then log in with any user name and the key), "
                    "or keep the default --host 127.0.0.1")


def host_is_loopback(host: str) -> bool:
    from serve.args import is_loopback

    return is_loopback(host)


def endpoint_url(url: str) -> str:
    """http://HOST:PORT[/v1] -> http://HOST:PORT/v1"""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")) or len(u.split("://", 1)[1]) == 0:
        raise UserError(f"'{url}' is not an http(s) URL", "e.g. --endpoint http://127.0.0.1:8000/v1")
    return u if u.endswith("/v1") else u + "/v1"


def pick_port(host: str, port: int) -> int:
    from serve.process import check_port_free, free_port

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number", "use 1-65535, or 0 for any free port")
    if port == 0:
        return free_port(host)
    check_port_free(host, port)
    return port


def launch_page(app, args, port: int, auth) -> str:
    """The page on `port`; with `--port 0` a free port is picked now (the servers just started may have taken
    the one free before they started) and, if another process takes it first, a new one, three times."""
    from demo.app import launch

    tries = 3 if args.port == 0 else 1
    for attempt in range(tries):
        if args.port == 0:
            port = pick_port(args.host, 0)
        try:
            return launch(app, host=args.host, port=port, auth=auth, share=args.share, debug=args.debug,
                          max_file_mb=max(4 * args.max_image_mb, 20))
        except OSError as e:  # e.g. the port was taken while the servers started
            if attempt + 1 == tries:
                raise UserError(f"the page cannot listen on {args.host}:{port} ({e})",
                                "pick another --port (0: any free port)") from None
    raise AssertionError("unreachable")


def default_model() -> str:
    from core.hardware import detect

    return "vl-autoround" if detect().has_gpu else "tiny-vl"


def compare_alias(model: str) -> str:
    """The 16-bit base of a quantized alias (for a bare --compare)."""
    from core import catalog

    if model not in catalog.VARIANTS:
        raise UserError(f"--compare without a value needs a catalog alias for --model (got '{model}')",
                        "name the model to compare with: --compare ALIAS")
    v = catalog.variant(model)
    if not v.is_quantized:
        raise UserError(f"'{model}' is already the 16-bit base, so a bare --compare has nothing to add",
                        f"name the other model, e.g. --compare {catalog.quantized_alias(model, 'gptq')}")
    return v.family.base_alias


# ---------------------------------------------------------------- targets

def describe(name: str) -> tuple[str, bool]:
    """(note shown next to the name, takes images) for a model name or alias."""
    from core import catalog

    v = catalog.VARIANTS.get(name)
    if v is None:
        return "", True
    note = ("4-bit GGUF (llama.cpp)" if v.format.name == "gguf" else f"W4A16 ({v.format.name})") if v.is_quantized \
        else "16-bit"
    return note, v.modality == "vl"


def endpoint_target(url: str, model: str | None, api_key: str | None):
    """A Target for a running server: checks now that it answers and serves `model`."""
    from demo.app import Target
    from serve.client import served_models

    base = endpoint_url(url)
    try:
        served = served_models(base, api_key)
    except UserError as e:
        raise UserError(e.what, "check the URL, or start a server with `python -m serve --model ALIAS`") from None
    if not served:
        raise UserError(f"the server at {base} serves no model", "check that server")
    if model is None:
        model = served[0]
    elif model not in served:
        raise UserError(f"the server at {base} serves {', '.join(served)}, not '{model}'",
                        "pass the served name with --model (or leave it out)")
    note, images = describe(model)
    return Target(model, base, model, api_key, note=note, accepts_images=images)


def served_target(model: str, api_key: str | None, stack: ExitStack, share_gpu: bool = False,
                  engine: str = "auto"):
    """Start a server for `model` through serve (stopped when `stack` closes) and return its Target: the engine
    `python -m serve --engine` would pick (llama.cpp for GGUF variants, else vLLM).
    `share_gpu`: two servers started here share one GPU, so each may take under half its memory."""
    import serve
    from demo.app import Target

    lp = serve.plan(model, engine, api_key=api_key, **({"gpu_memory_utilization": GPU_SHARE} if share_gpu else {}))
    print(f"demo: {model}: engine {lp.engine} — {lp.reason}", file=sys.stderr, flush=True)
    if lp.engine == "vllm":
        print(f"demo: starting a server for {model} (vLLM start-up takes a minute or more) ...", file=sys.stderr,
              flush=True)
    srv = stack.enter_context(serve.launch(lp, progress=True))
    print(f"demo: {srv.model} is up at {srv.base_url} (log: {srv.log_path})", file=sys.stderr, flush=True)
    note, images = describe(srv.model)
    return Target(srv.model, srv.base_url, srv.model, srv.api_key, note=note, accepts_images=images), srv


def _stop_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.doctor:
        import serve

        return serve.doctor()
    from serve.args import default_api_key

    api_key = args.api_key or default_api_key()
    exposed = args.share or not host_is_loopback(args.host)
    auth = login(parse_auth(args.auth), api_key, exposed, args.host)
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}", "e.g. --max-tokens 256")
    if args.max_image_mb <= 0:
        raise UserError(f"--max-image-mb must be positive, got {args.max_image_mb}", "e.g. --max-image-mb 10")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}", "e.g. --timeout 120")
    port = pick_port(args.host, args.port)
    model = args.model or (None if args.endpoint else default_model())
    if not args.model and not args.endpoint:
        print(f"demo: no --model given: using {model}", file=sys.stderr)
    compare = args.compare
    if compare == BASE:
        if model is None:
            raise UserError("--compare without a value needs --model", "name both: --model ALIAS --compare ALIAS")
        compare = compare_alias(model)
    compare_on = compare is not None or args.compare_endpoint is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):  # end like Ctrl-C: servers stopped, page closed
        signal.signal(sig, _stop_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even where the shell ignored SIGINT

    import serve
    from core.hardware import detect
    from demo.app import Settings, build_app

    for name, endpoint in ((model, args.endpoint), (compare, args.compare_endpoint)):
        if name is not None and endpoint is None:  # every check serve makes before any start
            serve.plan(name, args.engine, api_key=api_key)  # alias, files, engine, W4A16 here
    settings = Settings(max_tokens=args.max_tokens, max_image_bytes=int(args.max_image_mb * 2**20),
                        timeout_s=args.timeout)
    share_gpu = detect().has_gpu and not args.endpoint and compare_on and not args.compare_endpoint
    with ExitStack() as stack:
        started = []
        targets = []
        if args.endpoint:
            targets.append(endpoint_target(args.endpoint, model, api_key))
        else:
            t, srv = served_target(model, api_key, stack, share_gpu, args.engine)
            targets.append(t)
            started.append(srv)
        if compare_on:
            if args.compare_endpoint:
                targets.append(endpoint_target(args.compare_endpoint, compare, api_key))
            else:
                t, srv = served_target(compare, api_key, stack, share_gpu, args.engine)
                targets.append(t)
                started.append(srv)
            if targets[1].label == targets[0].label:  # e.g. one endpoint passed twice
                targets[1].label += " (2)"
        app = build_app(targets, settings)
        url = launch_page(app, args, port, auth)
        stack.callback(app.close)
        shown = " vs ".join(f"{t.label} at {t.base_url}" for t in targets)
        print(f"demo: running at {url} ({shown}) — Ctrl-C to stop", flush=True)
        if args.share:
            if getattr(app, "share_url", None):
                print(f"demo: public link {app.share_url}", flush=True)
            else:
                print("warning: --share made no public link (Gradio's reason is above); the page is local only",
                      file=sys.stderr, flush=True)
        if auth and not isinstance(auth, tuple):
            print("demo: log in with any user name and the API key as password", flush=True)
        warned = set()
        while True:
            time.sleep(1.0)
            for srv in started:
                if not srv.alive() and srv.model not in warned:
                    warned.add(srv.model)
                    print(f"warning: the server for {srv.model} stopped (log: {srv.log_path}) — the page will "
                          "show errors for it; restart the demo", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
