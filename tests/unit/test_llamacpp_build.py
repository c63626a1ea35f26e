"""core.llamacpp_build: a llama.cpp child that dies by a signal becomes one UserError line; one that runs passes."""
from __future__ import annotations

import sys

import pytest

from core.errors import UserError
from core.llamacpp_build import REBUILD, check_runs, probe_argv

SEGFAULT = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]  # a real SIGSEGV, as ggml's AMX matmul gave


def test_a_crashing_child_is_one_line_that_says_how_to_rebuild(tmp_path):
    with pytest.raises(UserError) as e:
        check_runs(tmp_path / "m.gguf", argv=SEGFAULT)
    msg = str(e.value)
    assert "SIGSEGV" in msg and "m.gguf" in msg and "AMX" in msg and "\n" not in msg
    assert e.value.todo == REBUILD and "-mno-amx-int8" in REBUILD and "\n" not in e.value.line()


def test_a_child_that_runs_or_fails_in_python_passes(tmp_path):
    check_runs(tmp_path / "m.gguf", argv=[sys.executable, "-c", "pass"])
    check_runs(tmp_path / "m.gguf", argv=[sys.executable, "-c", "raise SystemExit(3)"])  # the caller reports it


def test_a_hung_child_is_one_line(tmp_path):
    with pytest.raises(UserError, match="within 1 s"):
        check_runs(tmp_path / "m.gguf", argv=[sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=1)


def test_probe_decodes_the_given_file_with_the_given_python(tmp_path):
    argv = probe_argv(tmp_path / "x.gguf", "/opt/py/bin/python")
    assert argv[0] == "/opt/py/bin/python" and argv[-1] == str(tmp_path / "x.gguf")
    assert "AMX_INT8 = 1" in argv[2] and ".eval(" in argv[2]
