"""What every bench engine provides (`Engine`), and the failure helpers they share."""
from __future__ import annotations

import re
from collections.abc import Callable

from bench.metrics import RequestResult
from bench.workload import Request


class Engine:
    kind = "?"
    debug = False  # print tracebacks of failed requests (--debug)

    def __init__(self, alias: str, location: str, modality: str):
        self.alias, self.location, self.modality = alias, location, modality
        self.info: dict = {"engine": self.kind}

    def open(self) -> None:
        raise NotImplementedError

    def run(self, requests: list[Request], concurrency: int,
            on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
        raise NotImplementedError

    def answer(self, prompt: str, max_tokens: int) -> str:
        raise NotImplementedError

    def rss_bytes(self) -> int | None:
        return None

    def device_peak_bytes(self) -> int | None:
        return None

    def failure_reason(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class VariantFailed(Exception):
    """A variant could not be measured; the message is the one-line reason recorded in the report."""


def one_line(text: str, limit: int = 500) -> str:
    """A failure reason fit for one table cell."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_ERR = re.compile(r"(?:^|\] |^\S+ )((?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)): (.+)$")
_WRAPPERS = ("EngineDeadError", "EngineCore encountered an issue", "Worker failed with error")


def error_from_log(text: str) -> str | None:
    """The root-cause `SomethingError: message` of a server log: the first one logged as an error (or printed
    bare by a traceback), skipping warnings and the wrappers vLLM re-raises it in."""
    for line in (text or "").splitlines():
        if " WARNING " in line or " INFO " in line or any(w in line for w in _WRAPPERS):
            continue
        m = _ERR.search(line.strip())
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    return None
