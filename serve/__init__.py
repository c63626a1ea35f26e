"""serve: an OpenAI-compatible server for any variant, by whichever engine fits (serve/engines: vLLM, llama.cpp).
The one front door that the serve CLI, the demo, the quickstart and the bench all use:

    import serve
    with serve.start("tiny-vl") as srv:                  # engine "auto": serve/engine.py's rule
        print(srv.base_url, srv.model)                   # http://127.0.0.1:PORT/v1 tiny-vl
    lp = serve.plan("tiny-text-gguf", port=8001)         # the decision and the command, nothing started
    print(lp.engine, lp.reason, lp.command)

Options (keywords of `options`) are ServeOptions' fields; `port=None` picks a free port, `api_key=None` takes
$QWEN_W4_API_KEY, `cpu_int4=None` takes $QWEN_W4_CPU_INT4.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from core.hardware import Hardware
    from serve.args import ServeOptions
    from serve.engines import Launch
    from serve.process import Server


def options(*, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
            max_model_len: int | None = None, cpu_int4: str | None = None, extra_args=(), **more) -> ServeOptions:
    """ServeOptions from keywords, checked once: a bad value is one UserError line."""
    import os

    from core.errors import UserError
    from serve.args import CPU_INT4_ENV, ServeOptions, default_api_key
    from serve.process import free_port

    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a valid port", "use 1-65535, or 0 to pick a free one")
    if max_model_len is not None and max_model_len < 1:
        raise UserError(f"--max-model-len {max_model_len} must be positive", "leave it out to use the model's default")
    unknown = sorted(set(more) - set(ServeOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown serve option(s): {', '.join(unknown)}")
    return ServeOptions(host=host, port=port or free_port(host),
                        api_key=api_key if api_key is not None else default_api_key(),
                        max_model_len=max_model_len, extra_args=tuple(extra_args),
                        cpu_int4=(cpu_int4 or os.environ.get(CPU_INT4_ENV) or "auto").strip().lower(), **more)


def plan(model: str, engine: str = "auto", *, hw: Hardware | None = None, **opts) -> Launch:
    """Which engine serves `model` here and its exact command (raises UserError for what cannot work)."""
    from core.hardware import detect
    from serve.engine import decide
    from serve.engines import get

    hw = hw or detect()
    choice = decide(model, hw, engine)
    lp = get(choice.engine).plan(choice.model or model, options(**opts), hw)
    lp.reason = choice.reason
    return lp


def launch(lp: Launch, *, run_dir: str | Path | None = None, timeout_s: float | None = None, progress: bool = True,
           checks: bool = True) -> Server:
    """Start what `plan` decided and wait until it answers; ServerError (with the log's tail) if it does not."""
    from serve.engines import get
    from serve.process import spawn

    eng = get(lp.engine)
    if checks:
        eng.preflight(lp)
    return spawn(lp.argv, lp.env, engine=eng, command=lp.command, served_name=lp.served_name, api_key=lp.api_key,
                 host=lp.host, port=lp.port, run_dir=run_dir, timeout_s=timeout_s or eng.START_TIMEOUT_S,
                 progress=progress)


def start(model: str, engine: str = "auto", *, hw: Hardware | None = None, run_dir: str | Path | None = None,
          timeout_s: float | None = None, progress: bool = True, **opts) -> Server:
    """A running server for `model` (alias, folder, Hub id, .gguf): `plan` then `launch`. Use it as a context
    manager, or call .stop()."""
    return launch(plan(model, engine, hw=hw, **opts), run_dir=run_dir, timeout_s=timeout_s, progress=progress)


def doctor(as_json: bool = False) -> int:
    """`--doctor` of serve and the commands above it: core's rows and the engines' (serve/engine.py)."""
    from core.doctor import report
    from core.hardware import detect
    from serve.engine import doctor_rows

    return report(as_json, extra=doctor_rows(detect()))
