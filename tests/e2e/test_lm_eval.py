"""`python -m bench.lm_eval` against a served tiny model: lm-eval's `local-completions` scores the repo's own
multiple-choice task (bench/lm_eval_tasks/) from the server's prompt logprobs, and what it records is what the
server says (checked against one /v1/completions request of our own); `--api chat` runs the generation task; bad
input is one line. Uses the session's tiny-text vLLM server (conftest) and one short llama.cpp server.
"""
from __future__ import annotations

import json

import pytest

from tests.e2e.cli_run import assert_one_line_error, run_mod

pytestmark = pytest.mark.e2e


def _key(srv) -> list[str]:
    return ["--api-key", srv.api_key] if srv.api_key else []


def _served_loglikelihood(srv, tok, context: str, continuation: str) -> float:
    """log P(continuation | context) from the server's echoed prompt logprobs, context and continuation tokenized
    apart (what lm-eval's API models send when context + continuation split cleanly)."""
    from bench import served_quality as sq

    ctx = tok(context, add_special_tokens=False).input_ids
    cont = tok(continuation, add_special_tokens=False).input_ids
    r = sq.post(srv.base_url, "/v1/completions", {"model": srv.model, "prompt": ctx + cont, "max_tokens": 1,
                                               "logprobs": 1, "echo": True, "temperature": 0}, srv.api_key)
    lps = r["choices"][0]["logprobs"]["token_logprobs"]
    return sum(lps[len(ctx):len(ctx) + len(cont)])


def test_multiple_choice_through_the_served_endpoint(server, artifact, tmp_path):
    from transformers import AutoTokenizer

    srv = server("tiny-text")
    out = tmp_path / "mc"
    r = run_mod("bench.lm_eval", "--endpoint", srv.base_url, *_key(srv), "--tokenizer", "tiny-text",
                "--tasks", "qwen_w4_mc", "--limit", "12", "--num-concurrent", "2", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| qwen_w4_mc | acc |" in r.stdout
    rep = json.loads((out / "results.json").read_text())
    accs = {row["metric"]: row for row in rep["table"]}
    assert accs["acc"]["n"] == 12 and 0.0 <= accs["acc"]["value"] <= 1.0, rep["table"]
    assert rep["server"]["started"] is False and rep["lm_eval_model"] == "local-completions"
    assert "api_key" not in json.dumps(rep["server"]) and (srv.api_key or "\0") not in (out / "results.json").read_text()
    samples = [json.loads(ln) for ln in (out / "samples_qwen_w4_mc.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all(len(s["resps"]) == 4 for s in samples)
    # lm-eval's log-likelihood of each choice is the server's: recompute the first item's four ourselves
    tok = AutoTokenizer.from_pretrained(artifact("tiny-text"))
    first = samples[0]
    assert len(first["arguments"]) == 4
    for (context, continuation), resp in zip(first["arguments"], first["resps"]):
        ll = resp[0][0]
        assert abs(float(ll) - _served_loglikelihood(srv, tok, context, continuation)) < 0.05, (context, continuation)


def test_generation_through_chat_completions(server, tmp_path):
    srv = server("tiny-text")
    out = tmp_path / "gen"
    r = run_mod("bench.lm_eval", "--endpoint", srv.base_url, *_key(srv), "--api", "chat", "--tasks", "qwen_w4_gen",
                "--limit", "4", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "results.json").read_text())
    row = next(row for row in rep["table"] if row["metric"] == "exact_match")
    assert row["n"] == 4 and 0.0 <= row["value"] <= 1.0 and rep["lm_eval_model"] == "local-chat-completions"
    samples = [json.loads(ln) for ln in (out / "samples_qwen_w4_gen.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(isinstance(s["resps"][0][0], str) for s in samples)


def test_bad_input_is_one_line(tmp_path, artifact):
    import serve

    r = run_mod("bench.lm_eval", "--endpoint", "http://127.0.0.1:9/v1", "--tasks", "qwen_w4_nope",
                "--out", str(tmp_path / "x"))
    assert_one_line_error(r, "unknown lm-eval task 'qwen_w4_nope'")
    r = run_mod("bench.lm_eval", "--endpoint", "http://127.0.0.1:9/v1", "--tokenizer", "tiny-text",
                "--out", str(tmp_path / "x"))
    assert_one_line_error(r, "cannot reach the endpoint")
    r = run_mod("bench.lm_eval", "--endpoint", "http://127.0.0.1:9/v1", "--api", "chat", "--tasks", "qwen_w4_mc")
    assert_one_line_error(r, "log-likelihood", "--api completions")
    artifact("tiny-text-gguf")
    with serve.start("tiny-text-gguf", "llamacpp", progress=False) as g:  # llama.cpp's server refuses `echo`
        r = run_mod("bench.lm_eval", "--endpoint", g.base_url, *_key(g), "--tokenizer", "tiny-text",
                    "--out", str(tmp_path / "y"), timeout=300)
    assert_one_line_error(r, "no prompt logprobs", "--api chat")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
