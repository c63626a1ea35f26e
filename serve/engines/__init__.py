"""The server engines and their registry. An engine is a module with the functions of `Engine` below; adding one is
one new module here plus one line in REGISTRY (then `--engine NAME` of serve, demo and bench reaches it).

    from serve.engines import get
    eng = get("llamacpp")
    lp = eng.plan("tiny-text-gguf", options, hw)   # pure: argv, env, port; nothing started
    eng.preflight(lp)                               # one-line UserError for what cannot work
    srv = process.spawn(lp.argv, lp.env, engine=eng, ...)   # or simply serve.start(...)

Which engine serves a model when the user says `auto` is serve/engine.py's rule.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import UserError

if TYPE_CHECKING:
    from core.hardware import Hardware
    from serve.args import ServeOptions
    from serve.process import Server

# --engine NAME -> the module that runs it
REGISTRY: dict[str, str] = {
    "vllm": "serve.engines.vllm",
    "llamacpp": "serve.engines.llamacpp",
}


@dataclass
class Launch:
    """Everything an engine decided before its server starts: what `--dry-run` prints."""

    engine: str  # registry name
    model: str  # what was asked for (alias, folder, file)
    served_name: str  # the model name clients use
    hw: Hardware
    opts: ServeOptions  # host, port and api_key are final here
    argv: list[str]
    env: dict[str, str]
    command: str  # argv as printed (secrets masked)
    info: Any = None  # the engine's own view of the model (vLLM: serve.args.ModelInfo; llama.cpp: GgufModel)
    notes: list[str] = field(default_factory=list)  # lines serve prints before starting (e.g. the CPU int4 kernel)
    reason: str = ""  # why this engine (serve/engine.py)
    client_max_pixels: int | None = None  # an image budget clients must apply themselves (the engine has none of its
    #                                       own: llama.cpp), from the model's processor config

    @property
    def host(self) -> str:
        return self.opts.host

    @property
    def port(self) -> int:
        return self.opts.port

    @property
    def api_key(self) -> str | None:
        return self.opts.api_key


class Engine(Protocol):
    """What every engine module provides (module-level names)."""

    NAME: str  # registry name, the --engine value
    LABEL: str  # how messages name it: "vLLM", "llama.cpp"
    LOG_NAME: str  # its log file in the run folder
    START_TIMEOUT_S: float  # default wait for readiness

    def plan(self, model: str, opts: ServeOptions, hw: Hardware) -> Launch:
        """The command for `model` (pure apart from reading the model's files); UserError if it cannot serve it."""

    def preflight(self, lp: Launch) -> None:
        """Every check possible before starting (port, files, the engine's Python); one-line UserError."""

    def ready(self, srv: Server) -> bool:
        """The server answers."""

    def phase(self, lines: list[str]) -> str:
        """The start-up phase its log shows."""

    def likely_cause(self, lines: list[str], returncode: int | None) -> tuple[str, str]:
        """(likely cause, what to do) from a dead server's log."""

    def doctor_rows(self, hw: Hardware) -> list[tuple[str, bool | None, str]]:
        """What `--doctor` shows about this engine: (what, ok, detail)."""


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Engine:
    """The engine module registered as `name`."""
    try:
        return importlib.import_module(REGISTRY[name])  # type: ignore[return-value]
    except KeyError:
        raise UserError(f"unknown engine '{name}'", f"use --engine {'|'.join(('auto', *REGISTRY))}") from None
