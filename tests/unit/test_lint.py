"""`ruff check` over the repository: its rules and exclusions are pyproject.toml's [tool.ruff], its version is
constraints.txt's (the `test` extra installs it)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_ruff_check_passes():
    assert importlib.util.find_spec("ruff") is not None, \
        "ruff is not installed: pip install -c constraints.txt ruff (it is in the `test` extra)"
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        pytest.fail(f"ruff check found problems (fix them; its settings: pyproject.toml [tool.ruff]):\n"
                    f"{r.stdout}{r.stderr}", pytrace=False)
