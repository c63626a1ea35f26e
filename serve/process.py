"""Server processes of any engine: start one in its own session with its log in a run folder, wait until the
engine says it is ready, explain why it died, stop its whole tree. The engines (serve/engines/) say what to run;
every server process of the project is started by `spawn` here.

Each server runs in its own process group with its log in `<home>/runs/<timestamp>-<alias>/<engine>.log`.
`Server.stop()` ends the whole tree (SIGTERM, then SIGKILL), and every server still running is stopped when this
Python exits normally, on SIGTERM/SIGHUP (unless the program set its own handler) and on Ctrl-C; a server started
from the main thread also gets SIGTERM if its parent is killed.
"""
from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from core import catalog
from core.errors import UserError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

    from serve.engines import Engine

TAIL_LINES = 25  # log lines shown when a server dies
SCAN_LINES = 400  # log lines searched for the cause


class ServerError(UserError):
    """A server died or never became ready: one line for the user, the log's tail for the curious."""

    def __init__(self, what: str, todo: str, log_path: Path, tail: list[str]):
        super().__init__(what, todo, exit_code=1)
        self.log_path = log_path
        self.tail = tail


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
    engine: str = "vllm"  # the registry name of the engine that runs it (serve/engines)
    explain: Callable[[list[str], int | None], tuple[str, str]] | None = field(default=None, repr=False)  # its
    # likely_cause(log lines, return code)
    _stopped: bool = field(default=False, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.log_path.parent

    def alive(self) -> bool:
        return not self._stopped and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The server's process tree (e.g. vLLM's API server and its engine/worker children)."""
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
        return (self.explain or likely_cause)(_tail(self.log_path, SCAN_LINES), self.proc.returncode)

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


def default_run_dir(name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    return catalog.home() / "runs" / f"{stamp}-{safe}"


def spawn(argv: list[str], env: dict[str, str], *, engine: Engine, command: str, served_name: str,
          api_key: str | None, host: str, port: int, run_dir: str | Path | None, timeout_s: float,
          progress: bool) -> Server:
    """Start `engine`'s server process in its own session, logging to a run folder, and wait until
    `engine.ready(srv)`; else stop its whole tree and raise ServerError with the engine's likely cause."""
    run = Path(run_dir) if run_dir else default_run_dir(served_name)
    run.mkdir(parents=True, exist_ok=True)
    log_path = run / engine.LOG_NAME
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
                 argv=argv, pid=proc.pid, command=command, proc=proc, host=host, port=port, engine=engine.NAME,
                 explain=engine.likely_cause)
    with _LIVE_LOCK:
        _LIVE.add(srv)
    try:
        wait_ready(srv, engine, timeout_s, progress)
    except BaseException:
        srv.stop()
        raise
    return srv


# ---------------------------------------------------------------- waiting, and explaining failures

def phase(lines: list[str], phases: Sequence[tuple[str, str]]) -> str:
    """The start-up phase a log shows: `phases` is (substring of a log line, what the user sees); the latest
    matching line wins."""
    for line in reversed(lines):
        for needle, label in reversed(phases):
            if needle in line:
                return label
    return "starting"


def wait_ready(srv: Server, engine: Engine, timeout_s: float, progress: bool) -> None:
    """Poll `engine.ready(srv)`; show the phase from the log; raise ServerError if the process dies or time
    runs out."""
    tty = progress and sys.stderr.isatty()
    t0 = time.monotonic()
    shown = ""
    try:
        while True:
            if srv.proc.poll() is not None:
                raise died(srv, f"{engine.LABEL} exited (code {srv.proc.returncode}) while starting '{srv.model}'")
            if engine.ready(srv):
                return
            elapsed = time.monotonic() - t0
            if elapsed > timeout_s:
                raise died(srv, f"{engine.LABEL} did not answer within {timeout_s:.0f} s ('{srv.model}')",
                           timed_out=True)
            if progress and elapsed > 2:
                now = engine.phase(_tail(srv.log_path, 40))
                if tty:
                    sys.stderr.write(f"\r[serve] {srv.model}: {now} ... {elapsed:4.0f} s\033[K")
                    sys.stderr.flush()
                elif now != shown:
                    print(f"[serve] {srv.model}: {now} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
                shown = now
            time.sleep(0.25)
    finally:
        if tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def http_ok(url: str, api_key: str | None = None) -> bool:
    """GET `url` answers 200 within 2 s."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# (regex on the log tail, likely cause, what to do) every engine shares; an engine puts its own before these
COMMON_CAUSES = (
    ((r"out of memory|OutOfMemory|Cannot allocate memory|MemoryError|std::bad_alloc|"
      r"not enough (KV cache )?memory|No available memory for the cache blocks|larger than the available KV cache"),
     "out of memory", "lower --max-model-len, close other programs, or (GPU) lower --gpu-memory-utilization"),
    (r"[Aa]ddress already in use|Errno 98",
     "the port is already in use", "pick another --port, or stop what is using it"),
    (r"json\.decoder\.JSONDecodeError|JSONDecodeError",
     "a JSON file of the checkpoint is corrupt", "re-create the artifact"),
)
_EXC_LINE = re.compile(r"(?:^|\s)((?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)): (.+)$")
_NOT_RAISED = re.compile(r" (WARNING|INFO|DEBUG) ")  # "... Exception: ..." inside a warning was handled


def _exception(line: str):
    return None if _NOT_RAISED.search(line) else _EXC_LINE.search(line.strip())


def likely_cause(lines: list[str], returncode: int | None = None,
                 causes: Sequence[tuple[str, str, str]] = COMMON_CAUSES) -> tuple[str, str]:
    """(likely cause, what to do) from a dead server's log: the first of `causes` whose regex matches, else the
    first exception the log shows, else what the exit code says."""
    text = "\n".join(lines)
    for pattern, cause, todo in causes:
        if re.search(pattern, text):
            return cause, todo
    for line in lines:  # else the first exception the server printed (the root; later ones wrap it)
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


def died(srv: Server, what: str, timed_out: bool = False) -> ServerError:
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
