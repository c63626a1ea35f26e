"""A stand-in engine for tests/unit/test_engine_registry.py: Python's http.server answering GET /v1/models from a
folder. It is what adding an engine takes: this one module (the functions of serve.engines.Engine) and one
REGISTRY line."""
from __future__ import annotations

import sys
from pathlib import Path

from serve import process
from serve.engines import Launch

NAME = "echo"
LABEL = "echo server"
LOG_NAME = "echo.log"
START_TIMEOUT_S = 30.0


def plan(model, opts, hw) -> Launch:
    root = Path(model)
    argv = [sys.executable, "-m", "http.server", str(opts.port), "--bind", opts.host, "--directory", str(root),
            *opts.extra_args]
    return Launch(NAME, model, opts.served_name or root.name, hw, opts, argv, {}, " ".join(argv))


def preflight(lp: Launch) -> None:
    process.check_port_free(lp.opts.host, lp.opts.port)


def ready(srv: process.Server) -> bool:
    return process.http_ok(srv.base_url + "/models")


def phase(lines: list[str]) -> str:
    return process.phase(lines, (("Serving HTTP", "serving"),))


def likely_cause(lines: list[str], returncode: int | None = None) -> tuple[str, str]:
    return process.likely_cause(lines, returncode)


def doctor_rows(hw) -> list[tuple[str, bool | None, str]]:
    return [("echo", None, "test engine")]
