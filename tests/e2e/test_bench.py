"""`python -m bench` end to end: real vLLM servers (the shared fixture), the real client, a real report.

tiny-vl (bf16) is benchmarked through an already running server (`--endpoint`), text and with an
image; its W4A16 GPTQ export is served where this hardware has vLLM's int4 kernel and must be
refused, and recorded as failed with the reason, where it has not; a model folder that does not
exist is recorded as failed while the others still report. The numbers are checked for internal
consistency against the raw per-request data.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.hardware import detect

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
OUT_LEN, PROMPTS, CONC = 8, 2, (1, 2)
PNG = b"\x89PNG\r\n\x1a\n"


def _bench(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "bench", *args, "--no-progress"], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"bench failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _check_runs(v: dict, scenarios: tuple[str, ...]) -> None:
    """Every level completed with exactly the requested tokens; aggregates agree with the raw requests."""
    assert set(v["runs"]) == set(scenarios), v["runs"].keys()
    for scen in scenarios:
        for c in CONC:
            s, raw = v["runs"][scen][str(c)], v["raw"][scen][str(c)]
            n = max(PROMPTS, c)
            assert s["completed"] == n and s["failed"] == 0 and len(raw) == n
            assert all(r["ok"] and r["output_tokens"] == OUT_LEN for r in raw), raw
            assert s["total_output_tokens"] == n * OUT_LEN
            assert all(r["prompt_tokens"] > 0 for r in raw)
            assert s["total_input_tokens"] == sum(r["prompt_tokens"] for r in raw)
            assert s["output_throughput"] == pytest.approx(s["total_output_tokens"] / s["duration_s"])
            assert s["request_throughput"] == pytest.approx(n / s["duration_s"])
            ttfts = [r["ttft_s"] for r in raw]
            assert all(0 < t < r["latency_s"] for t, r in zip(ttfts, raw))
            assert s["mean_ttft_ms"] == pytest.approx(1000 * sum(ttfts) / n)
            tpots = [(r["latency_s"] - r["ttft_s"]) / (r["output_tokens"] - 1) for r in raw]
            assert s["mean_tpot_ms"] == pytest.approx(1000 * sum(tpots) / n)
            assert all(len(r["itl_s"]) <= OUT_LEN + 1 for r in raw)  # a token's chunk each, and a finish chunk
            # a request's streamed gaps add up to its decode time (ITL is measured chunk to chunk)
            for r in raw:
                assert sum(r["itl_s"]) == pytest.approx(r["latency_s"] - r["ttft_s"], abs=0.05)
            assert s["p99_ttft_ms"] >= s["median_ttft_ms"] > 0


def test_bench_vllm_tiny_vl_and_w4(server, artifact, tmp_path):
    hw = detect()
    w4_ok, _ = hw.w4a16_serving
    base = server("tiny-vl")
    artifact("tiny-vl-gptq")
    endpoints = [f"tiny-vl={base.base_url}"]
    if w4_ok:
        endpoints.append(f"tiny-vl-gptq={server('tiny-vl-gptq').base_url}")
    missing = tmp_path / "no-such-model"
    out = tmp_path / "report"
    r = _bench(["--models", f"tiny-vl,tiny-vl-gptq,{missing}", "--endpoint", ",".join(endpoints),
                "--concurrency", ",".join(map(str, CONC)), "--prompts", str(PROMPTS), "--input-len", "32",
                "--output-len", str(OUT_LEN), "--quality-tokens", "8", "--out", str(out)])

    assert sorted(p.name for p in out.iterdir()) == ["latency.png", "memory.png", "report.json", "report.md",
                                                     "throughput.png"]
    for png in ("latency.png", "memory.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == PNG
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    v = {x["alias"]: x for x in rep["variants"]}
    assert list(v) == ["tiny-vl", "tiny-vl-gptq", str(missing)]

    # the 16-bit baseline, measured through the running server
    b = v["tiny-vl"]
    assert b["status"] == "ok" and rep["derived"]["baseline"] == "tiny-vl"
    _check_runs(b, ("text", "image"))
    assert b["engine"]["started_by_bench"] is False and b["engine"]["served_model"] == "tiny-vl"
    assert b["memory"]["rss_peak_bytes"] > 500 * 2**20, "the server's process tree was not found / measured"
    w = b["weights"]
    assert 0 < w["bytes_per_token"] < b["disk"]["weights_bytes"] and w["bytes_by_group"]["vision"] > 0
    assert rep["bandwidth"]["gb_s"] > 0.5
    row = next(x for x in rep["derived"]["rows"] if x["alias"] == "tiny-vl")
    assert row["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(1.0)
    assert row["roofline"]["limit_tok_s"] == pytest.approx(row["roofline"]["bandwidth_gb_s"] * 1e9 / w["bytes_per_token"])
    assert row["roofline"]["pct_of_limit"] > 0  # above 100% is possible: a tiny model stays in the CPU caches
    if row["roofline"]["pct_of_limit"] > 100:
        assert "Above 100%: tiny-vl" in md and "stay in the CPU caches" in md
    q = rep["quality"]["tiny-vl"]
    assert q["exact"] == q["prompts"] == 6  # greedy answers of the same server are identical to themselves

    # the W4A16 variant: served where the kernel exists, refused with the reason where it does not
    g = v["tiny-vl-gptq"]
    if w4_ok:
        assert g["status"] == "ok", g["reason"]
        _check_runs(g, ("text", "image"))
        grow = next(x for x in rep["derived"]["rows"] if x["alias"] == "tiny-vl-gptq")
        assert grow["bytes_per_token"] < row["bytes_per_token"]
        assert grow["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(
            grow["decode_tok_s_bs1"] / row["decode_tok_s_bs1"])
        assert "tiny-vl-gptq" in rep["quality"]
    else:
        assert g["status"] == "failed" and "AVX-512" in g["reason"], g["reason"]
        assert "\n" not in g["reason"]
        assert f"- **tiny-vl-gptq**: {g['reason']}" in md
        assert f"failed: tiny-vl-gptq: {g['reason']}" in r.stdout

    # a variant that cannot even be resolved is recorded, the others still report
    m = v[str(missing)]
    assert m["status"] == "failed" and "no such model folder" in m["reason"]
    assert "| tiny-vl | ok |" in md and "## Serving metrics: one image per request" in md
    assert rep["environment"]["command"].startswith("python -m bench --models tiny-vl,tiny-vl-gptq")


def test_bench_transformers_engine_tiny(artifact, tmp_path):
    """`--engine transformers` (no vLLM): the 16-bit model and its AutoRound W4A16 export in process."""
    artifact("tiny-text-autoround")
    out = tmp_path / "report"
    _bench(["--engine", "transformers", "--threads", "1", "--models", "tiny-text,tiny-text-autoround",
            "--concurrency", ",".join(map(str, CONC)), "--prompts", str(PROMPTS), "--input-len", "32",
            "--output-len", str(OUT_LEN), "--quality-tokens", "8", "--out", str(out)])
    rep = json.loads((out / "report.json").read_text())
    v = {x["alias"]: x for x in rep["variants"]}
    for alias in ("tiny-text", "tiny-text-autoround"):
        assert v[alias]["status"] == "ok", v[alias]["reason"]
        _check_runs(v[alias], ("text",))
        assert v[alias]["engine"]["threads"] == 1
    assert v["tiny-text"]["engine"]["linear_kernel"] == "torch.nn.modules.linear.Linear"
    kernel = v["tiny-text-autoround"]["engine"]["linear_kernel"]
    assert "auto_round" in kernel and "QuantLinear" in kernel, kernel  # AutoRound's own W4 kernel ran
    assert v["tiny-text-autoround"]["weights"]["bytes_per_token"] < v["tiny-text"]["weights"]["bytes_per_token"]
    assert rep["quality"]["tiny-text"]["exact"] == 6
    assert (out / "report.md").is_file() and (out / "throughput.png").read_bytes()[:8] == PNG
