"""Metric maths of `python -m bench`: percentiles, TPOT/ITL as vLLM defines them, ratios, roofline."""
import json
import struct

import numpy as np
import pytest

from bench import quality, roofline
from bench.metrics import RequestResult, percentile, ratio, summarize, tpot


@pytest.mark.parametrize("values", [[5.0], [1.0, 2.0], [3.0, 1.0, 2.0, 10.0], list(np.linspace(0, 1, 37))])
@pytest.mark.parametrize("p", [0, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(values, p):
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_edges():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_tpot_excludes_the_first_token():
    # 1 s to the first token, then 9 more tokens over 0.9 s -> 0.1 s per output token
    assert tpot(1.9, 1.0, 10) == pytest.approx(0.1)
    assert tpot(1.0, 1.0, 1) is None  # one token: no TPOT (vLLM leaves it out of the mean)
    assert tpot(None, 1.0, 5) is None


def _req(ttft, gaps, prompt=10):
    lat = ttft + sum(gaps)
    return RequestResult(True, ttft_s=ttft, latency_s=lat, output_tokens=len(gaps) + 1, prompt_tokens=prompt,
                         itl_s=list(gaps))


def test_summarize_definitions():
    a = _req(0.5, [0.1, 0.1, 0.1])  # 4 tokens, TPOT 0.1
    b = _req(1.0, [0.2, 0.4])  # 3 tokens, TPOT 0.3
    failed = RequestResult(False, error="boom")
    s = summarize([a, b, failed], duration_s=2.0)
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["boom"]
    assert s["total_output_tokens"] == 7 and s["total_input_tokens"] == 20
    assert s["output_throughput"] == pytest.approx(3.5)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["total_token_throughput"] == pytest.approx(13.5)
    assert s["mean_ttft_ms"] == pytest.approx(750.0)
    assert s["mean_tpot_ms"] == pytest.approx(200.0)  # mean of per-request TPOTs (0.1, 0.3)
    itls = [0.1, 0.1, 0.1, 0.2, 0.4]  # pooled over requests
    assert s["mean_itl_ms"] == pytest.approx(1000 * float(np.mean(itls)))
    assert s["p99_itl_ms"] == pytest.approx(1000 * float(np.percentile(itls, 99)))
    assert s["median_itl_ms"] == pytest.approx(100.0)
    assert s["std_ttft_ms"] == pytest.approx(1000 * float(np.std([0.5, 1.0])))
    assert s["mean_e2el_ms"] == pytest.approx(1000 * (0.8 + 1.6) / 2)
    assert s["decode_tok_s_per_stream"] == pytest.approx(5.0)
    assert s["ended_early"] == 0  # no finish reasons known (in-process engine): nothing counted early
    a.finish_reason, b.finish_reason = "length", "stop"
    assert summarize([a, b], duration_s=2.0)["ended_early"] == 1


def test_summarize_all_failed_has_no_numbers():
    s = summarize([RequestResult(False, error="x")], 1.0)
    assert s["completed"] == 0 and s["output_throughput"] == 0.0
    assert s["mean_ttft_ms"] is None and s["decode_tok_s_per_stream"] is None


def test_ratio():
    assert ratio(12.0, 8.0) == pytest.approx(1.5)
    assert ratio(None, 8.0) is None and ratio(1.0, 0) is None and ratio(1.0, None) is None


def test_roofline_arithmetic():
    # 1 GB per token on a 50 GB/s machine: at most 50 tok/s; 20 tok/s is 40% of it and reads 20 GB/s
    r = roofline.roofline(1e9, 20.0, 50.0)
    assert r["limit_tok_s"] == pytest.approx(50.0)
    assert r["achieved_gb_s"] == pytest.approx(20.0)
    assert r["pct_of_limit"] == pytest.approx(40.0)
    assert roofline.roofline(None, 20.0, 50.0)["limit_tok_s"] is None


def _write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]):
    header, off = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = roofline.DTYPE_BYTES[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)


def test_weights_bytes_per_token_w4_and_bf16(tmp_path):
    # a bf16 model: embeddings are not read per token, the LM head and decoder linears are
    bf = tmp_path / "bf16"
    bf.mkdir()
    (bf / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    _write_safetensors(bf / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [1024, 256]),
        "model.layers.0.self_attn.q_proj.weight": ("BF16", [256, 256]),
        "model.layers.0.mlp.down_proj.weight": ("BF16", [256, 512]),
        "model.layers.0.input_layernorm.weight": ("BF16", [256]),
        "lm_head.weight": ("BF16", [1024, 256]),
        "model.visual.blocks.0.attn.qkv.weight": ("BF16", [384, 128]),
    })
    w = roofline.weights(bf)
    g = w["bytes_by_group"]
    assert g["embedding"] == 1024 * 256 * 2 and g["vision"] == 384 * 128 * 2
    assert g["decoder_linear"] == (256 * 256 + 256 * 512) * 2
    assert w["bytes_per_token"] == g["decoder_linear"] + g["lm_head"] + 256 * 2
    # the same linears as GPTQ int4 (group 128): qweight int32 [in/8, out], scales fp16 [in/128, out]
    q = tmp_path / "w4"
    q.mkdir()
    (q / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    _write_safetensors(q / "model.safetensors", {
        "model.embed_tokens.weight": ("BF16", [1024, 256]),
        "model.layers.0.self_attn.q_proj.qweight": ("I32", [32, 256]),
        "model.layers.0.self_attn.q_proj.scales": ("F16", [2, 256]),
        "model.layers.0.self_attn.q_proj.qzeros": ("I32", [2, 32]),
    })
    w4 = roofline.weights(q)
    lin = 32 * 256 * 4 + 2 * 256 * 2 + 2 * 32 * 4
    assert w4["bytes_by_group"]["decoder_linear"] == lin
    assert w4["tied_embeddings"] and w4["bytes_per_token"] == lin + 1024 * 256 * 2  # tied head reads the table


def test_copy_bandwidth_is_positive():
    r = roofline.copy_bandwidth(threads=1, size_mib=8, repeats=2)
    assert r["gb_s"] > 0.1 and r["threads"] == 1


def test_quality_agreement():
    a = quality.agreement([1, 2, 3, 4], [1, 2, 9, 4, 5])
    assert a["prefix"] == 2 and a["match_rate"] == pytest.approx(3 / 5) and not a["exact"]
    assert quality.agreement([], [])["match_rate"] == 1.0
    res = quality.compare({"base": ["a b c"], "w4": ["a b d"]}, "base")
    assert res["base"]["exact"] == 1 and res["base"]["mean_match_rate"] == 1.0
    assert res["w4"]["mean_prefix"] == 2 and res["w4"]["mean_match_rate"] == pytest.approx(2 / 3)


def test_bandwidth_combines_before_and_after():
    a = {"device": "cpu", "by_threads": {"1": 10.0, "2": 15.0}, "gb_s": 15.0}
    b = {"device": "cpu", "by_threads": {"1": 12.0, "2": 14.0}, "gb_s": 14.0}
    c = roofline.combine_bandwidth(a, b)
    assert c["by_threads"] == {"1": 12.0, "2": 15.0} and c["gb_s"] == 15.0
    assert [m["gb_s"] for m in c["measurements"]] == [15.0, 14.0]
    two = roofline.copy_bandwidth(threads=2, size_mib=8, repeats=2)
    assert two["gb_s"] > 0.1 and two["threads"] == 2
