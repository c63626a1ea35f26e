"""Helpers for tests that run the project's commands as a user would: one subprocess, one error line."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_mod(module: str, *args: str, timeout: float = 120, env: dict | None = None, cwd: Path | None = None,
            preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root (or `cwd`, with the repository on PYTHONPATH)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env, preexec_fn=preexec_fn, check=False)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, exactly one non-empty stderr line `error: ...`, no traceback anywhere. Returns the line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, f"expected a failure:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def png_bytes(color=(220, 30, 30), size=(96, 64)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_error_last(r: subprocess.CompletedProcess, *needles: str) -> str:
    """For commands that print progress to stderr before failing: non-zero exit, the last non-empty stderr line is
    the only `error: ...` line, no traceback anywhere. Returns the line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, f"expected a failure:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert lines and lines[-1].startswith("error: "), f"expected a last line 'error: ...', got:\n{r.stderr[-3000:]}"
    assert sum("error: " in ln for ln in lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in lines[-1], f"{n!r} not in {lines[-1]!r}"
    return lines[-1]
