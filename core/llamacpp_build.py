"""What the installed llama.cpp build (llama-cpp-python) can run on this CPU, asked before quantize or serve use it.

ggml's AMX backend (compiled in when llama.cpp is built with `-DGGML_NATIVE=ON` on an AMX CPU) repacks Q4_0/Q4_K/
Q8_0 weights into an "AMX" buffer and then dies with SIGSEGV at its first matmul on the AMX CPUs measured here
(`ldtilecfg` raising a general-protection fault inside `ggml_backend_amx_mul_mat`, 1 or 2 threads, tiny and
0.6B-shaped models; NOTES.md 2026-12-03). The Makefile builds llama.cpp without it. For any other build this module
runs a short prompt through the model in a child process first, only when the build reports `AMX_INT8 = 1`: a crash there
becomes a one-line refusal that says how to rebuild, instead of a dead server or a dead quantize run.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from core.errors import UserError

REBUILD = ("rebuild llama-cpp-python without ggml's AMX backend: `make venv` in this project, or "
           "CFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' CXXFLAGS=\"$CFLAGS\" CMAKE_ARGS=-DGGML_NATIVE=ON "
           "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python")

# The child: exit 0 at once for a build without the AMX backend, else load the model and run a short prompt.
_PROBE = """
import sys
import llama_cpp
if b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
    sys.exit(0)
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_batch=64, n_threads=1, verbose=False)
llm.eval(list(range(min(16, llm.n_vocab()))))  # a prompt: the crash came at prompt batches, not at 1 token
llm.eval([0])
sys.exit(0)
"""


def probe_argv(gguf_file: str | Path, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-c", _PROBE, str(gguf_file)]


def check_runs(gguf_file: str | Path, python: str | None = None, *, argv: list[str] | None = None,
               timeout_s: float = 600) -> None:
    """Raise UserError when llama.cpp dies (a signal) running a 16-token prompt through `gguf_file`; return when it runs, or when
    the build has no AMX backend (nothing to ask then). `argv` replaces the child's command (tests)."""
    cmd = argv or probe_argv(gguf_file, python)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"llama.cpp did not run a short prompt through {Path(gguf_file).name} within {timeout_s:.0f} s",
                        "check the file and free memory, or re-run with --debug") from None
    if r.returncode >= 0:
        return  # ran, or failed in Python (the caller's own load reports that error properly)
    try:
        name = signal.Signals(-r.returncode).name
    except ValueError:
        name = f"signal {-r.returncode}"
    raise UserError(f"llama.cpp crashed ({name}) running {Path(gguf_file).name}: this llama-cpp-python "
                    "was built with ggml's AMX backend, which crashes on this CPU", REBUILD)
