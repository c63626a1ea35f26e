"""The pure parts of `python -m bench --gpu-check` (bench/gpu_check.py): the 8B shape against the published config,
weight accounting, the per-level roofline maths, the budget rule and the opaque-linear wrapper (on CPU)."""
import time

import pytest
import torch

from bench import gpu_check as gc
from bench.metrics import RequestResult, summarize

# Qwen/Qwen3-VL-8B-Instruct config.json, text_config (typed in again here, not imported)
PUBLISHED_TEXT = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 5000000,
                  "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "tie_word_embeddings": False}


class _Tok:
    def convert_tokens_to_ids(self, token):
        return {"<|im_end|>": 2, "<|endoftext|>": 0}[token]


def test_8b_shape_is_the_published_text_config():
    assert gc.SHAPES["8b"] == PUBLISHED_TEXT
    cfg = gc.text_config("8b", _Tok())
    for k, v in PUBLISHED_TEXT.items():
        got = cfg.rope_parameters["rope_theta"] if k == "rope_theta" else getattr(cfg, k)
        assert got == v, k
    assert cfg.hidden_act == "silu" and cfg.attention_bias is False and cfg.eos_token_id == 2


def test_8b_shape_params_and_bytes_per_token():
    """On the meta device (no memory): 8.19 B params; 15.1 GB of bf16 read per decoded token (the shared notes' H100
    figure for this shape)."""
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM._from_config(gc.text_config("8b", _Tok()), dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 8_190_735_360
    w = gc.model_weights(model)
    embed = 151936 * 4096 * 2
    assert w["bytes_by_group"]["embedding"] == embed and w["bytes_by_group"]["lm_head"] == embed
    assert w["bytes_per_token"] == 15_136_811_008 == 2 * 8_190_735_360 - embed
    assert w["dtypes_by_group"]["decoder_linear"] == {"BF16": 36 * 192_937_984 * 2}


def test_small_shape_is_the_same_architecture():
    small = gc.SHAPES["small"]
    assert set(small) == set(PUBLISHED_TEXT) and small["hidden_size"] < 4096
    for k in ("hidden_size", "intermediate_size"):
        assert small[k] % 128 == 0  # W4 group size 128
    assert small["num_attention_heads"] * small["head_dim"] % 128 == 0
    assert small["num_key_value_heads"] * small["head_dim"] % 128 == 0
    assert small["rope_theta"] == 5e6 and small["tie_word_embeddings"] is False


def test_weights_of_groups_and_per_token_rule():
    t = [("model.embed_tokens.weight", "BF16", 100), ("model.layers.0.self_attn.q_proj.weight", "BF16", 40),
         ("model.layers.0.mlp.down_proj.qweight", "I32", 10), ("model.layers.0.input_layernorm.weight", "BF16", 2),
         ("lm_head.weight", "BF16", 100), ("model.norm.weight", "BF16", 1)]
    w = gc.weights_of(t)
    assert w["bytes_by_group"] == {"decoder_linear": 50, "lm_head": 100, "embedding": 100, "vision": 0, "other": 3}
    assert w["bytes_per_token"] == 153 and w["tensors"] == 6
    assert w["dtypes_by_group"]["decoder_linear"] == {"BF16": 40, "I32": 10}
    tied = gc.weights_of([x for x in t if x[0] != "lm_head.weight"], tied=True)
    assert tied["bytes_per_token"] == 50 + 3 + 100  # a tied head reads the whole table


def _runs(tpot_ms: float, ttft_ms: float, batch: int, n: int = 2) -> dict:
    res = []
    for _ in range(n):
        times = [ttft_ms / 1000 + i * tpot_ms / 1000 for i in range(128)]
        res.append(RequestResult(True, ttft_s=times[0], latency_s=times[-1], output_tokens=128, prompt_tokens=256,
                                 itl_s=[times[i] - times[i - 1] for i in range(1, 128)]))
    return summarize(res, duration_s=times[-1] * n / batch)


def _report():
    return {"bandwidth": {"gb_s": 1000.0, "tool": "x"},
            "variants": [
                {"alias": "bf16", "status": "ok", "is_16bit": True, "weights": {"bytes_per_token": 10e9},
                 "runs": {"text": {"1": _runs(20.0, 50.0, 1), "16": _runs(25.0, 400.0, 16)}}},
                {"alias": "w4a16", "status": "ok", "is_16bit": False, "weights": {"bytes_per_token": 4e9},
                 "runs": {"text": {"1": _runs(10.0, 25.0, 1), "16": _runs(20.0, 800.0, 16)}}},
                {"alias": "broken", "status": "failed", "reason": "x", "weights": {}, "runs": {}}]}


def test_level_rows_roofline_and_ratios():
    rows = {(r["variant"], r["batch"]): r for r in gc.level_rows(_report())}
    assert set(rows) == {("bf16", 1), ("bf16", 16), ("w4a16", 1), ("w4a16", 16)}
    b1, w1, w16 = rows["bf16", 1], rows["w4a16", 1], rows["w4a16", 16]
    assert b1["decode_tok_s"] == pytest.approx(50.0) and b1["limit_tok_s"] == pytest.approx(100.0)
    assert b1["pct_of_limit"] == pytest.approx(50.0) and b1["decode_x_bf16"] == pytest.approx(1.0)
    assert b1["prefill_ms"] == pytest.approx(50.0)
    # W4: 4 GB per step at 1000 GB/s -> 250 steps/s; 100 tok/s per stream = 40%
    assert w1["limit_tok_s"] == pytest.approx(250.0) and w1["pct_of_limit"] == pytest.approx(40.0)
    assert w1["decode_x_bf16"] == pytest.approx(2.0) and w1["prefill_x_bf16"] == pytest.approx(0.5)
    assert w16["decode_x_bf16"] == pytest.approx(50.0 / 40.0) and w16["prefill_x_bf16"] == pytest.approx(2.0)
    assert w16["output_tok_s"] == _report()["variants"][1]["runs"]["text"]["16"]["output_throughput"]


def test_findings_table_shows_every_level():
    rep = _report()
    rep["gpu_check"] = {"shape": "8b", "params": 8_190_735_360, "device": "cuda", "build_s": 0.5,
                        "machine": {"device_name": "NVIDIA H200"}, "stages": {"bf16 measured": 100.0},
                        "skipped": ["quantize and w4a16: past the 480 s budget"]}
    md = gc.findings(rep)
    assert "8.19 B params" in md and "NVIDIA H200" in md and "**skipped: quantize and w4a16" in md
    assert "| w4a16 | 1 | 100.0 |" in md and "| 40% | 2.00 | 0.50 |" in md
    assert "| bf16 | 16 | 40.0 |" in md
    assert "- broken (failed): " in md and "**reason: x**" in md


def test_budget_skips_a_level_that_would_end_late():
    eng = gc.CheckEngine("bf16", None, [1, 2, 3], deadline=time.monotonic() + 50, budget_s=480,
                         clock={"level_s": 100.0})
    with pytest.raises(gc.OverBudget, match="batch 16 skipped: it would end after the 480 s budget"):
        eng.run([], 16)  # a warm-up call (no on_done) opens a level
    eng.clock["level_s"] = 10.0  # a level that fits starts (and fails further on: no requests, no model)
    with pytest.raises(Exception) as e:
        eng.run([], 16)
    assert not isinstance(e.value, gc.OverBudget)


class _Kernel(torch.nn.Module):
    """Stands in for a humming linear: Python in its forward that torch.compile cannot trace in one graph."""

    QUANT_TYPE = "humming_gptq"

    def __init__(self, k: int, n: int):
        super().__init__()
        self.outfeatures = n
        self.weight = torch.nn.Parameter(torch.randn(n, k), requires_grad=False)

    def forward(self, x):
        if float(x.abs().sum().item()) >= 0:  # data-dependent Python: a graph break under dynamo
            return x @ self.weight.T
        return x


def _toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(_Kernel(8, 16), torch.nn.ReLU(), _Kernel(16, 4))


def test_opaque_wrapper_makes_the_step_one_graph():
    x = torch.randn(3, 8)
    plain = _toy()
    want = plain(x)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):  # the kernel as it is cannot be captured whole
        torch.compile(plain, fullgraph=True, backend="eager")(x)
    model = _toy()
    assert gc.wrap_opaque(model) == 2 and gc.wrap_opaque(model) == 0  # once per module
    seen = []

    def record(gm, inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    torch._dynamo.reset()
    got = torch.compile(model, fullgraph=True, backend=record)(x)
    assert torch.allclose(got, want)
    assert sum("opaque_linear" in s for s in seen) == 2
    torch._dynamo.reset()
    got = torch.compile(model, fullgraph=True, backend="aot_eager")(x)  # through the fake (shape) function too
    assert torch.allclose(got, want) and got.shape == (3, 4)
    torch._dynamo.reset()
