"""serve/vllm_plugin.py: registered as a vLLM general plugin; acts only with QWEN_W4_CPU_INT4=w4a8, and then only
inside vLLM's weight processing of its CPU int4 kernel (what it does in a real server: tests/e2e/test_serve.py)."""
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("vllm")

PROBE = """
import types
import torch
from serve import vllm_plugin
from vllm.model_executor.kernels.linear.mixed_precision import cpu as k
seen = []
def observe(self, layer):  # stands in for vLLM's own weight processing: what does it see?
    seen.append(torch.cpu._is_amx_tile_supported())
k.CPUWNA16LinearKernel.process_weights_after_loading = observe
vllm_plugin.register(); vllm_plugin.register()  # idempotent
wrapped = k.CPUWNA16LinearKernel.process_weights_after_loading
wrapped(None, types.SimpleNamespace())
print(wrapped is not observe, seen, torch.cpu._is_amx_tile_supported())
"""


def _probe(env_value: str | None) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "QWEN_W4_CPU_INT4"}
    if env_value is not None:
        env["QWEN_W4_CPU_INT4"] = env_value
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_entry_point_is_registered():
    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("qwen_w4_cpu_int4") == "serve.vllm_plugin:register"


def test_inactive_without_the_variable():
    assert _probe(None) == f"False [{_amx()}] {_amx()}"  # vLLM's own processing sees the real CPU
    assert _probe("w4a16") == f"False [{_amx()}] {_amx()}"


def test_w4a8_sees_amx_only_inside_weight_processing():
    assert _probe("w4a8") == f"True [True] {_amx()}"


def _amx() -> bool:
    import torch

    return torch.cpu._is_amx_tile_supported()
