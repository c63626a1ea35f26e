"""llama.cpp's own C++ server as an engine, for GGUF artifacts (a Qwen3-VL one with its vision projector through
mtmd). It runs from PyPI's prebuilt `xllamacpp` in its own process (serve/engines/llamacpp_server.py), started,
watched and stopped by serve/process.py like any engine:

    import serve
    with serve.start("tiny-text-gguf") as srv:       # waits until /health answers
        print(srv.base_url, srv.model)               # http://127.0.0.1:PORT/v1 tiny-text-gguf

What it brings over llama-cpp-python's Python server (the engine before 2026-12-07): continuous batching over
parallel slots, an image-token cap of its own (`image_max_tokens`, set to the model processor's budget), token usage
in the stream, `ignore_eos`, `/metrics`. The command is a pure function of its inputs (`llamacpp_command`); slots and
context per slot come from serve --plan's memory model (serve/fit.py counts each slot's KV cache). The API key
travels in env LLAMA_API_KEY, never on argv.
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
from serve import process
from serve.args import MASK, ServeOptions, is_loopback, shown_command
from serve.client import PIXELS_PER_TOKEN
from serve.engines import Launch
from serve.engines.llamacpp_server import KEY_ENV

if TYPE_CHECKING:
    from core.hardware import Hardware

NAME = "llamacpp"
LABEL = "llama.cpp"
LOG_NAME = "llamacpp.log"
START_TIMEOUT_S = 300.0
DEFAULT_CTX = 2048
DEFAULT_SLOTS = 4  # parallel slots without --parallel: serve --plan's default concurrency
INSTALL = "`pip install -c constraints.txt -e .[llamacpp]` (xllamacpp's prebuilt wheel)"


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


def llamacpp_command(gguf_file: Path, *, served_name: str, host: str, port: int, ctx_per_slot: int, slots: int,
                     n_threads: int, api_key: str | None = None, python: str | None = None, extra_args=(),
                     mmproj: Path | None = None, image_max_tokens: int | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, extra env) of llama.cpp's server. Pure. A VL model: its projector through mtmd, with pictures capped
    at `image_max_tokens` by the server itself (the model's own chat template from the GGUF)."""
    argv = [python or sys.executable, "-m", "serve.engines.llamacpp_server", "--model", str(gguf_file),
            "--alias", served_name, "--host", host, "--port", str(port), "--parallel", str(slots),
            "--ctx-per-slot", str(ctx_per_slot), "--threads", str(n_threads)]
    if mmproj is not None:
        argv += ["--mmproj", str(mmproj)]
        if image_max_tokens:
            argv += ["--image-max-tokens", str(image_max_tokens)]
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if api_key:
        env[KEY_ENV] = api_key
    return argv + list(extra_args), env


def slots_and_context(gm: GgufModel, opts: ServeOptions, hw: Hardware) -> tuple[int, int, list[str]]:
    """(slots, context per slot, notes): --parallel slots (default 4), each with --max-model-len tokens (default the
    model's), shortened to what serve --plan says fits in free RAM with every slot's KV cache counted."""
    from serve import fit

    slots = DEFAULT_SLOTS if opts.parallel is None else opts.parallel
    if slots < 1:
        raise UserError(f"--parallel {slots}: llama.cpp needs at least one slot", "pass --parallel 1 or more")
    want = opts.max_model_len or gm.max_model_len or DEFAULT_CTX
    folder = gm.file.parent
    if not (folder / "config.json").is_file():  # a bare .gguf: no config to plan from
        return slots, want, [f"llama.cpp: {slots} slots x {want} tokens (no config.json beside the file: not planned)"]
    try:
        p = fit.predict(str(folder), hw, concurrency=slots, max_model_len=want)
    except (KeyError, TypeError, ValueError) as e:  # a config without the model's dimensions
        return slots, want, [f"llama.cpp: {slots} slots x {want} tokens (config.json lacks {e}: not planned)"]
    if p["max_context"] < fit.MIN_CONTEXT:
        raise UserError(f"{gm.name} does not fit in free RAM with {slots} llama.cpp slots "
                        f"(planned {p['predicted_bytes'] / 1e9:.1f} GB, {hw.mem_available_gib:.1f} GiB available)",
                        f"lower --parallel or --max-model-len (`python -m serve --plan {gm.name} --concurrency "
                        f"{slots}` shows what fits), or free memory")
    ctx = min(want, p["max_context"])
    notes = [] if ctx == want else [(f"llama.cpp: --max-model-len {want} x {slots} slots does not fit in free RAM: "
                                     f"{ctx} tokens per slot (serve --plan's memory model)")]
    return slots, ctx, notes


def plan(model: str, opts: ServeOptions, hw: Hardware) -> Launch:
    """llama.cpp's command for a GGUF alias, artifact folder or .gguf file."""
    gm = resolve_gguf(model)
    if not is_loopback(opts.host) and not opts.api_key:
        raise UserError(f"--host {opts.host} exposes the server beyond this machine, and no API key is set",
                        "pass --api-key KEY or set QWEN_W4_API_KEY (clients send it as their bearer token)")
    slots, ctx, notes = slots_and_context(gm, opts, hw)
    threads = opts.n_threads or max(1, hw.cores)
    name = opts.served_name or gm.served_name
    budget = max_image_pixels(gm.file.parent) if gm.mmproj else None
    cap = budget // PIXELS_PER_TOKEN if budget else None
    argv, env = llamacpp_command(gm.file, served_name=name, host=opts.host, port=opts.port, ctx_per_slot=ctx,
                                 slots=slots, n_threads=threads, api_key=opts.api_key, extra_args=opts.extra_args,
                                 mmproj=gm.mmproj, image_max_tokens=cap)
    shown = shown_command(argv, {k: (MASK if k == KEY_ENV else v) for k, v in env.items()})
    info = GgufModel(gm.name, gm.file, name, gm.max_model_len, gm.mmproj)
    notes.insert(0, f"llama.cpp: {slots} slots x {ctx} tokens (continuous batching), {threads} threads"
                 + (f", projector {gm.mmproj.name}" if gm.mmproj else ""))
    if cap:
        notes.append(f"images: at most {cap} tokens per picture (the model's processor budget, {budget} pixels), "
                     "applied by the server")
    return Launch(NAME, model, name, hw, opts, argv, env, shown, info, notes)


def preflight(lp: Launch) -> None:
    """The port, the GGUF files and llama.cpp's server (xllamacpp) in the engine's Python: one line each."""
    process.check_port_free(lp.opts.host, lp.opts.port)
    for f in (lp.info.file, lp.info.mmproj):
        if f is not None:
            check_gguf(f)
    check_engine(lp.argv[0])


def check_gguf(path: Path) -> None:
    """A GGUF file whose header reads and whose tensor data all lie inside the file (a copy cut short by a full
    disk or an interrupted download fails here, in one line, not inside llama.cpp)."""
    size = path.stat().st_size
    try:
        from gguf import GGUFReader

        r = GGUFReader(str(path))
        need = max((int(t.data_offset) + int(t.n_bytes) for t in r.tensors), default=0)
    except Exception as e:  # noqa: BLE001 - any parse failure is "not a complete GGUF file"
        raise UserError(f"{path.name} is not a readable GGUF file ({type(e).__name__}: {str(e)[:80]})",
                        "re-create it with `python -m quantize --formats gguf`, or copy it again") from None
    if need > size:
        raise UserError(f"{path.name} is truncated: {size} of {need} bytes",
                        "re-create it with `python -m quantize --formats gguf`, or copy it again")


def check_engine(python: str) -> None:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec("xllamacpp") is None:
            raise UserError(f"llama.cpp's server (xllamacpp) is not installed in {sys.executable}", INSTALL)
        return
    r = subprocess.run([python, "-c", "import xllamacpp"], check=False, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise UserError(f"llama.cpp's server (xllamacpp) cannot be imported by {python}", INSTALL)


def ready(srv: process.Server) -> bool:
    """/health answers 200 (llama.cpp's server: 503 while the model loads; public even with an API key)."""
    return process.http_ok(srv.base_url.removesuffix("/v1") + "/health", srv.api_key)


PHASES = (("llama_model_load", "loading the model"), ("clip_model_loader", "loading the vision projector"),
          ("warming up", "warming up"), ("listening on", "starting the HTTP server"))


def phase(lines: list[str]) -> str:
    return process.phase(lines, PHASES)


CAUSES = (
    (r"failed to load model|error loading model|llama_model_load: error", "llama.cpp cannot load this GGUF file",
     "re-create it with `python -m quantize --formats gguf`, or check that the file is complete"),
    (r"clip_model_load|failed to load (the )?(clip|multimodal)|mtmd_init_from_file.{0,40}fail",
     "llama.cpp cannot load the vision projector (mmproj)", "re-create the GGUF artifact with its projector"),
    (r"No module named '?xllamacpp", "llama.cpp's server (xllamacpp) is not installed for this Python", INSTALL),
    (r"couldn't bind|address already in use", "llama.cpp's server cannot listen on its port",
     "pick another --port, or stop what uses it"),
    *process.COMMON_CAUSES,
)


def likely_cause(lines: list[str], returncode: int | None = None) -> tuple[str, str]:
    return process.likely_cause(lines, returncode, CAUSES)


def doctor_rows(hw: Hardware) -> list[tuple[str, bool | None, str]]:
    from core.hardware import versions

    v = versions().get("xllamacpp")
    return [("llama.cpp", v is not None, f"llama.cpp's server (xllamacpp {v}, continuous batching)" if v else
             "not installed: `pip install -c constraints.txt -e .[llamacpp]` (GGUF serving, the CPU fast path)")]
