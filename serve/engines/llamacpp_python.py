"""TEMPORARY (kept for one side-by-side bench run, removed after it): the engine before 2026-12-07.
llama.cpp's OpenAI server (llama-cpp-python's `llama_cpp.server`) as an engine, for GGUF artifacts (a Qwen3-VL one
with its vision projector through mtmd). Started, watched and stopped by serve/process.py like any engine:

    import serve
    with serve.start("tiny-text-gguf") as srv:       # waits until /v1/models answers
        print(srv.base_url, srv.model)               # http://127.0.0.1:PORT/v1 tiny-text-gguf

The command is a pure function of its inputs (`llamacpp_command`). The API key travels in env API_KEY
(llama_cpp.server's settings read it), never on argv.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import catalog
from core.artifact import gguf_file, inspect, max_image_pixels, mmproj_file, read_report
from core.errors import UserError
from core.llamacpp_build import check_runs
from serve import process
from serve.args import MASK, ServeOptions, is_loopback, shown_command
from serve.client import PIXELS_PER_TOKEN
from serve.engines import Launch

if TYPE_CHECKING:
    from core.hardware import Hardware

NAME = "llamacpppython"
LABEL = "llama-cpp-python"
LOG_NAME = "llamacpp-python.log"
START_TIMEOUT_S = 300.0
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


def resolve_gguf(model: str) -> GgufModel:
    """An alias (`tiny-text-gguf`), an artifact folder holding a .gguf, or a .gguf file -> GgufModel."""

    def proj(where: Path) -> Path | None:
        m = mmproj_file(where)
        return m.resolve() if m else None

    p = Path(model).expanduser()
    if p.suffix == ".gguf" and p.is_file():
        if gguf_file(p) is None:
            raise UserError(f"'{model}' is a vision projector, not a language model",
                            "pass the artifact folder (or the model's .gguf beside it)")
        return GgufModel(model, p.resolve(), p.stem, None, proj(p))
    if p.is_dir() and gguf_file(p) is not None:
        _check_projector(p)
        v = catalog.VARIANTS.get(p.resolve().name)
        return GgufModel(model, gguf_file(p).resolve(), p.resolve().name,
                         v.family.max_model_len if v else _report_len(p), proj(p))
    r = catalog.resolve(model)
    f = gguf_file(Path(r.location)) if r.source == "local" else None
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
    a = inspect(folder)
    if "vision_config" in a.config and a.mmproj is None:
        raise UserError(f"{folder} is a Qwen3-VL GGUF artifact without its vision projector (mmproj-*.gguf)",
                        f"re-run `python -m quantize --formats gguf` for this model, or put the mmproj file in {folder}")


def _report_len(folder: Path) -> int | None:
    return int(read_report(folder).get("max_model_len") or 0) or None


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


def plan(model: str, opts: ServeOptions, hw: Hardware) -> Launch:
    """llama.cpp's command for a GGUF alias, artifact folder or .gguf file."""
    gm = resolve_gguf(model)
    if not is_loopback(opts.host) and not opts.api_key:
        raise UserError(f"--host {opts.host} exposes the server beyond this machine, and no API key is set",
                        "pass --api-key KEY or set QWEN_W4_API_KEY (clients send it as their bearer token)")
    n_ctx = opts.max_model_len or gm.max_model_len or DEFAULT_CTX
    threads = opts.n_threads or max(1, hw.cores)
    name = opts.served_name or gm.served_name
    argv, env = llamacpp_command(gm.file, served_name=name, host=opts.host, port=opts.port, n_ctx=n_ctx,
                                 n_threads=threads, api_key=opts.api_key,
                                 extra_args=opts.extra_args, mmproj=gm.mmproj)
    shown = shown_command(argv, {k: (MASK if k == KEY_ENV else v) for k, v in env.items()})
    info = GgufModel(gm.name, gm.file, name, gm.max_model_len, gm.mmproj)
    notes = [f"llama.cpp: n_ctx {n_ctx}, {threads} threads" + (f", projector {gm.mmproj.name}" if gm.mmproj else "")]
    budget = max_image_pixels(gm.file.parent) if gm.mmproj else None
    if budget:
        notes.append(f"images: llama.cpp's server has no image budget; the model's processor allows {budget} pixels "
                     f"({budget // PIXELS_PER_TOKEN} tokens): resize larger pictures client-side (serve.chat --max-image-pixels "
                     f"{budget}; the demo does it)")
    return Launch(NAME, model, name, hw, opts, argv, env, shown, info, notes, client_max_pixels=budget)


def preflight(lp: Launch) -> None:
    """The port, llama-cpp-python's server in the engine's Python, and (builds with ggml's AMX backend) a short
    prompt through the model in a child: a crashing build is one line, never a dead server."""
    process.check_port_free(lp.opts.host, lp.opts.port)
    check_engine(lp.argv[0])
    check_runs(lp.info.file, lp.argv[0])


def check_engine(python: str) -> None:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
            raise UserError(f"llama-cpp-python (with its server extra) is not installed in {sys.executable}", INSTALL)
        return
    r = subprocess.run([python, "-c", "import llama_cpp.server"], check=False, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise UserError(f"llama-cpp-python's server cannot be imported by {python}", INSTALL)


def ready(srv: process.Server) -> bool:
    """/v1/models answers 200 (llama_cpp.server has no /health)."""
    return process.http_ok(srv.base_url + "/models", srv.api_key)


PHASES = (("llama_model_load", "loading the model"), ("clip_model_loader", "loading the vision projector"),
          ("Uvicorn running", "starting the HTTP server"))


def phase(lines: list[str]) -> str:
    return process.phase(lines, PHASES)


CAUSES = (
    (r"failed to load model|error loading model|llama_model_load: error", "llama.cpp cannot load this GGUF file",
     "re-create it with `python -m quantize --formats gguf`, or check that the file is complete"),
    (r"clip_model_load|failed to load (the )?clip|mtmd_init_from_file.{0,40}fail",
     "llama.cpp cannot load the vision projector (mmproj)", "re-create the GGUF artifact with its projector"),
    (r"No module named '?(llama_cpp|uvicorn|sse_starlette|starlette_context)",
     "llama-cpp-python's server is not (properly) installed for this Python", INSTALL),
    *process.COMMON_CAUSES,
)


def likely_cause(lines: list[str], returncode: int | None = None) -> tuple[str, str]:
    return process.likely_cause(lines, returncode, CAUSES)


def doctor_rows(hw: Hardware) -> list[tuple[str, bool | None, str]]:
    from core.hardware import versions

    v = versions().get("llama-cpp-python")
    return [("llama.cpp", v is not None, f"llama-cpp-python {v}" if v else
             "not installed: `pip install -c constraints.txt -e .[llamacpp]` (GGUF serving, the CPU fast path)")]
