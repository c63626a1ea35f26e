"""Hardware detection and the doctor report."""
import json
import os
import subprocess
import sys
from pathlib import Path

from core.hardware import HIDE_FLAGS_ENV, Gpu, Hardware, detect

REPO = Path(__file__).resolve().parents[2]


def test_detect_reads_this_machine():
    hw = detect()
    assert hw.cores >= 1 and hw.mem_total_gib > 0
    assert hw.device in ("cpu", "cuda")
    cpuinfo = Path("/proc/cpuinfo").read_text()
    hidden = "avx512f" in os.environ.get(HIDE_FLAGS_ENV, "").split(",")
    assert hw.flag("avx512f") == (" avx512f" in cpuinfo and not hidden)


def test_hidden_flags_plan_for_a_smaller_cpu():
    code = "from core.hardware import detect; h = detect(); print(h.flag('avx512f'), h.w4a16_serving[0])"
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, HIDE_FLAGS_ENV: "avx512f,avx512_bf16"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_w4a16_serving_rules():
    avx2 = Hardware("x", 2, ("avx2",), 16, 8)
    avx512 = Hardware("x", 2, ("avx2", "avx512f", "avx512_bf16"), 16, 8)
    gpu = Hardware("x", 2, ("avx2",), 16, 8, (Gpu("H100", 80.0),))
    assert avx2.w4a16_serving[0] is False and "AVX-512" in avx2.w4a16_serving[1]
    assert avx512.w4a16_serving[0] is True
    assert gpu.w4a16_serving[0] is True and gpu.device == "cuda"


def test_doctor_prints_versions_and_verdicts():
    r = subprocess.run([sys.executable, "-m", "serve", "--doctor"], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    for word in ("torch", "transformers", "auto-round", "vllm", "cpu", "memory", "disk", "serve W4A16"):
        assert word in r.stdout


def test_doctor_json():
    from core.doctor import checks

    rows = checks()
    assert any(w == "vllm" for w, _, _ in rows)
    out = subprocess.run([sys.executable, "-c", "from core.doctor import report; report(as_json=True)"],
                         check=True, cwd=REPO, capture_output=True, text=True)
    data = json.loads(out.stdout)
    assert data["hardware"]["cores"] >= 1 and "torch" in data["versions"]
