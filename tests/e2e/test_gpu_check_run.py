"""`python -m bench --gpu-check` end to end on this CPU with the small shape: the real AutoRound RTN export and
reload, the real transformers engine, the report files; and its user errors. (The 8B shape runs on a lent GPU:
bench/gpu_check.py says how.)"""
import json

import pytest

from bench import gpu_check
from cli_run import assert_one_line_error, run_mod

pytestmark = pytest.mark.e2e


def test_gpu_check_small_shape_on_cpu(tmp_path):
    out = tmp_path / "gc"
    r = run_mod("bench", "--gpu-check", "--gpu-check-shape", "small", "--threads", "1", "--out", str(out),
                timeout=400)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert "Traceback" not in r.stderr
    rep = json.loads((out / "report.json").read_text())
    g = rep["gpu_check"]
    assert g["shape"] == "small" and g["device"] == "cpu" and g["prompt_tokens"] == gpu_check.INPUT_LEN
    assert g["machine"]["torch"] and g["machine"]["transformers"] and g["machine"]["auto-round"]
    assert g["quantize"]["wall_s"] > 0 and g["quantize"]["recipe"]["name"] == "rtn"
    assert g["quantize"]["autoround_kwargs"]["scheme"] == "W4A16" and g["quantize"]["recipe"]["iters"] == 0
    assert not g["skipped"]
    assert rep["bandwidth"]["gb_s"] > 0
    v = {x["alias"]: x for x in rep["variants"]}
    assert set(v) == {"bf16", "w4a16"} and all(x["status"] == "ok" for x in v.values()), rep["variants"]
    for x in v.values():
        for c in gpu_check.CONCURRENCY:
            run = x["runs"]["text"][str(c)]
            n = max(gpu_check.REQUESTS, c)
            assert run["completed"] == n and run["failed"] == 0, (x["alias"], c, run)
            assert run["total_output_tokens"] == n * gpu_check.OUTPUT_LEN
            assert run["total_input_tokens"] == n * gpu_check.INPUT_LEN
            assert run["decode_tok_s_per_stream"] > 0 and run["mean_ttft_ms"] > 0
        assert x["memory"]["rss_peak_bytes"] > 0
    assert v["w4a16"]["engine"]["quant_method"] == "auto-round"
    kernel = v["w4a16"]["engine"]["linear_kernel"]
    assert "QuantLinear" in kernel and ".fake." not in kernel, kernel  # a real CPU W4 kernel ran
    assert v["bf16"]["engine"]["linear_kernel"].endswith(".Linear")
    assert 0 < v["w4a16"]["weights"]["bytes_per_token"] < v["bf16"]["weights"]["bytes_per_token"]
    assert 0 < v["w4a16"]["disk"]["weights_bytes"] < v["bf16"]["disk"]["weights_bytes"]
    rows = gpu_check.level_rows(rep)
    assert len(rows) == 4 and all(r["pct_of_limit"] > 0 for r in rows)
    md = (out / "report.md").read_text()
    assert "## Findings" in md and "quantize: AutoRound RTN W4A16" in md and "| w4a16 | 16 |" in md
    for png in rep["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rep["plots"]) >= 2
    assert "report: " in r.stdout and "| w4a16 | ok |" in r.stdout


def test_gpu_check_user_errors(tmp_path):
    import torch

    if not torch.cuda.is_available():
        r = run_mod("bench", "--gpu-check", "--out", str(tmp_path / "x"), timeout=120)
        assert_one_line_error(r, "the 8B shape needs a CUDA GPU", "--gpu-check-shape small")
    r = run_mod("bench", "--gpu-check", "--gpu-check-shape", "small", "--gpu-check-budget", "0",
                "--out", str(tmp_path / "y"), timeout=120)
    assert_one_line_error(r, "--gpu-check-budget must be positive")
    (tmp_path / "z").mkdir()
    r = run_mod("bench", "--gpu-check", "--gpu-check-shape", "small", "--out", str(tmp_path / "z"), timeout=120)
    assert_one_line_error(r, "already exists", "--overwrite")
