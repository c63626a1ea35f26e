"""llama.cpp's OpenAI server (llama-cpp-python's `llama_cpp.server`) for GGUF artifacts: the same `Server` object as
serve/server.py's vLLM launcher, so serve.client, the demo and the bench work unchanged.

    from serve.llamacpp import start_server
    with start_server("tiny-text-gguf") as srv:      # waits until /v1/models answers
        print(srv.base_url, srv.model)               # http://127.0.0.1:PORT/v1 tiny-text-gguf

The command is a pure function of its inputs (`llamacpp_command`); the process runs in its own group with its log in
`<home>/runs/<timestamp>-<alias>/llamacpp.log`, and is stopped (whole tree) by `Server.stop()`, at exit and on
SIGTERM/SIGHUP, exactly like a vLLM server (the process helpers are serve/server.py's). The API key travels in env
API_KEY (llama_cpp.server's settings read it), never on argv.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core import catalog
from core.errors import UserError
from core.hardware import Hardware, detect
from core.llamacpp_build import check_runs
from serve import server as vs
from serve.args import MASK, default_api_key, is_loopback, shown_command

LOG_NAME = "llamacpp.log"
KEY_ENV = "API_KEY"  # llama_cpp.server's ServerSettings.api_key, read from the environment
DEFAULT_CTX = 2048
INSTALL = "`pip install -c constraints.txt -e .[llamacpp]` (builds llama.cpp with CMAKE_ARGS=-DGGML_NATIVE=ON)"


@dataclass(frozen=True)
class GgufModel:
    """What `--model` named, as far as llama.cpp is concerned."""

    name: str  # what the user typed
    file: Path  # the .gguf
    served_name: str
    max_model_len: int | None  # the catalog's / report's context length
    mmproj: Path | None = None  # a VL model's vision projector (llama.cpp's mtmd loads it beside the model)


@dataclass
class LlamaLaunch:
    model: GgufModel
    host: str
    port: int
    api_key: str | None
    n_ctx: int
    n_threads: int
    argv: list[str]
    env: dict[str, str]

    @property
    def command(self) -> str:
        return shown_command(self.argv, {k: (MASK if k == KEY_ENV else v) for k, v in self.env.items()})


def resolve_gguf(model: str) -> GgufModel:
    """An alias (`tiny-text-gguf`), an artifact folder holding a .gguf, or a .gguf file -> GgufModel."""
    from quantize.gguf import find_file, find_mmproj

    def proj(where: Path) -> Path | None:
        m = find_mmproj(where)
        return m.resolve() if m else None

    p = Path(model).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        if find_file(p) is None:
            raise UserError(f"'{model}' is a vision projector, not a language model",
                            "pass the artifact folder (or the model's .gguf beside it)")
        return GgufModel(model, p.resolve(), p.stem, None, proj(p))
    if p.is_dir() and find_file(p) is not None:
        _check_projector(p)
        v = catalog.VARIANTS.get(p.resolve().name)
        return GgufModel(model, find_file(p).resolve(), p.resolve().name,
                         v.family.max_model_len if v else _report_len(p), proj(p))
    r = catalog.resolve(model)
    f = find_file(Path(r.location)) if r.source == "local" else None
    if f is None:
        raise UserError(f"'{model}' is not a GGUF model (no .gguf file in {r.location})",
                        "llama.cpp serves GGUF artifacts: make one with `python -m quantize --model BASE --formats "
                        "gguf`, or serve this model with --engine vllm")
    _check_projector(Path(r.location))
    return GgufModel(model, f.resolve(), r.served_name,
                     r.variant.family.max_model_len if r.variant else _report_len(Path(r.location)),
                     proj(Path(r.location)))


def _check_projector(folder: Path) -> None:
    """A Qwen3-VL GGUF folder (its config has a vision_config) must hold its projector: without it llama.cpp would
    serve the language model alone and answer pictures it never saw."""
    import json

    from quantize.gguf import find_mmproj

    try:
        vl = "vision_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return
    if vl and find_mmproj(folder) is None:
        raise UserError(f"{folder} is a Qwen3-VL GGUF artifact without its vision projector (mmproj-*.gguf)",
                        f"re-run `python -m quantize --formats gguf` for this model, or put the mmproj file in {folder}")


def _report_len(folder: Path) -> int | None:
    import json

    try:
        return int(json.loads((folder / "quantization_report.json").read_text()).get("max_model_len") or 0) or None
    except (OSError, ValueError, TypeError):
        return None


def llamacpp_command(gguf_file: Path, *, served_name: str, host: str, port: int, n_ctx: int, n_threads: int,
                     api_key: str | None = None, python: str | None = None, extra_args=(),
                     mmproj: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, extra env) of llama.cpp's OpenAI server. Pure. A VL model: its projector through mtmd's generic
    chat handler (the model's own chat template from the GGUF, images where the template puts them)."""
    argv = [python or sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--host", host,
            "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
            "--n_threads_batch", str(n_threads), "--model_alias", served_name,
            # llama_cpp.server's default cuts a streaming answer off when another request arrives: queue instead
            "--interrupt_requests", "False"]
    if mmproj is not None:
        argv += ["--chat_format", "mtmd", "--clip_model_path", str(mmproj)]
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if api_key:
        env[KEY_ENV] = api_key
    return argv + list(extra_args), env


def plan(model: str, *, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
         max_model_len: int | None = None, served_name: str | None = None, extra_args=(),
         engine_python: str | None = None, n_threads: int | None = None, hw: Hardware | None = None) -> LlamaLaunch:
    gm = resolve_gguf(model)
    hw = hw or detect()
    key = api_key if api_key is not None else default_api_key()
    if not is_loopback(host) and not key:
        raise UserError(f"--host {host} exposes the server beyond this machine, and no API key is set",
                        "pass --api-key KEY or set QWEN_W4_API_KEY (clients send it as their bearer token)")
    n_ctx = max_model_len or gm.max_model_len or DEFAULT_CTX
    threads = n_threads or max(1, hw.cores)
    name = served_name or gm.served_name
    p = port if port is not None else vs.free_port(host)
    argv, env = llamacpp_command(gm.file, served_name=name, host=host, port=p, n_ctx=n_ctx, n_threads=threads,
                                 api_key=key, python=engine_python, extra_args=extra_args, mmproj=gm.mmproj)
    return LlamaLaunch(GgufModel(gm.name, gm.file, name, gm.max_model_len, gm.mmproj), host, p, key, n_ctx, threads,
                       argv, env)


def check_engine(python: str) -> None:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
            raise UserError(f"llama-cpp-python (with its server extra) is not installed in {sys.executable}", INSTALL)
        return
    r = subprocess.run([python, "-c", "import llama_cpp.server"], check=False, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise UserError(f"llama-cpp-python's server cannot be imported by {python}", INSTALL)


def launch(lp: LlamaLaunch, *, run_dir: str | Path | None = None, timeout_s: float = 300, progress: bool = True,
           checks: bool = True) -> vs.Server:
    if checks:
        vs.check_port_free(lp.host, lp.port)
        check_engine(lp.argv[0])
        check_runs(lp.model.file, lp.argv[0])  # a build whose AMX backend crashes: one line, no dead server
    return vs.spawn(lp.argv, lp.env, command=lp.command, served_name=lp.model.served_name, api_key=lp.api_key,
                    host=lp.host, port=lp.port, log_name=LOG_NAME, run_dir=run_dir, wait=_wait_ready,
                    timeout_s=timeout_s, progress=progress)


def start_server(model: str, *, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
                 max_model_len: int | None = None, served_name: str | None = None, extra_args=(),
                 engine_python: str | None = None, run_dir: str | Path | None = None, timeout_s: float = 300,
                 progress: bool = True, n_threads: int | None = None, hw: Hardware | None = None,
                 **_ignored) -> vs.Server:
    """A running llama.cpp OpenAI server for a GGUF alias / folder / file (same `Server` as vLLM's).
    vLLM-only options (force, tensor_parallel_size, ...) are accepted and ignored."""
    lp = plan(model, host=host, port=port, api_key=api_key, max_model_len=max_model_len, served_name=served_name,
              extra_args=extra_args, engine_python=engine_python, n_threads=n_threads, hw=hw)
    return launch(lp, run_dir=run_dir, timeout_s=timeout_s, progress=progress)


def ready(srv: vs.Server) -> bool:
    """/v1/models answers 200 (llama_cpp.server has no /health)."""
    req = urllib.request.Request(srv.base_url + "/models")
    if srv.api_key:
        req.add_header("Authorization", f"Bearer {srv.api_key}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_ready(srv: vs.Server, timeout_s: float, progress: bool) -> None:
    t0 = time.monotonic()
    said = False
    while True:
        if srv.proc.poll() is not None:
            raise vs._died(srv, f"llama.cpp's server exited (code {srv.proc.returncode}) while starting "
                                f"'{srv.model}'")
        if ready(srv):
            return
        if time.monotonic() - t0 > timeout_s:
            raise vs._died(srv, f"llama.cpp's server did not answer within {timeout_s:.0f} s ('{srv.model}')",
                           timed_out=True)
        if progress and not said and time.monotonic() - t0 > 2:
            print(f"[serve] {srv.model}: starting llama.cpp's server", file=sys.stderr, flush=True)
            said = True
        time.sleep(0.25)
