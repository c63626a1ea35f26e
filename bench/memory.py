"""Memory a variant costs: on-disk weights, resident memory of the serving process tree (CPU),
weights memory vLLM logs and peak device memory (GPU)."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_VLLM_WEIGHTS = re.compile(r"Model loading took ([0-9.]+) ?GiB")


def disk_bytes(model_dir: str | Path) -> dict:
    """On-disk size of the weight files and of the whole folder."""
    d = Path(model_dir)
    files = [f for f in d.rglob("*") if f.is_file()]
    return {
        "weights_bytes": sum(f.stat().st_size for f in files if f.name.endswith(WEIGHT_SUFFIXES)),
        "folder_bytes": sum(f.stat().st_size for f in files),
    }


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def pid_listening_on(url: str) -> int | None:
    """The local process that listens on the URL's port (to measure an `--endpoint` server), if any."""
    import psutil

    u = urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except (psutil.Error, OSError):
        return None
    return None


def vllm_weights_gib(log_text: str) -> float | None:
    """'Model loading took X GiB' from a vLLM (GPU) log; vLLM's CPU runner does not log it."""
    m = _VLLM_WEIGHTS.findall(log_text or "")
    return float(m[-1]) if m else None


def gpu_used_bytes() -> list[int] | None:
    """Used memory per visible GPU (nvidia-smi), None without one."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             check=False, capture_output=True, text=True, timeout=10).stdout
        return [int(float(x)) * 2**20 for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


class PeakSampler:
    """Samples `fn()` (bytes) in a background thread and keeps the first, last and peak values."""

    def __init__(self, fn: Callable[[], int | None], interval_s: float = 0.25):
        self.fn, self.interval_s = fn, interval_s
        self.first: int | None = None
        self.last: int | None = None
        self.peak: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int | None:
        try:
            v = self.fn()
        except Exception:  # noqa: BLE001 - a vanished process reads as no sample
            v = None
        if v:
            self.first = v if self.first is None else self.first
            self.last = v
            self.peak = v if self.peak is None else max(self.peak, v)
            self.samples += 1
        return v

    def __enter__(self) -> Self:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-memory")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.sample()

    def as_dict(self) -> dict:
        return {"first_bytes": self.first, "peak_bytes": self.peak, "last_bytes": self.last, "samples": self.samples}
