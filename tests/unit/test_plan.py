"""serve/fit.py (`python -m serve --plan`): weights, KV cache, image budget and the longest context that fits, from
hand-made configs and Hardware objects; the GPU pre-flight by compute capability; the image-budget knob mapping;
predictions against memory this project measured (reports/cpu-2026-12-01)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import shapes, tiny
from core.errors import UserError
from core.hardware import Gpu, Hardware
from serve import fit as P
from serve.args import kv_bytes_per_token

REPO = Path(__file__).resolve().parents[2]
AVX512 = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw")
CPU_23 = Hardware("Xeon", 2, AVX512, 23.5, 21.0, ())  # 23.5 GiB, 21 GiB of it free (a shared machine)
CPU_20 = Hardware("EPYC", 2, AVX512, 23.5, 20.0, ())
VL8 = shapes.config_dict("qwen3-vl-8b-instruct")
T4B = shapes.config_dict("qwen3-4b-instruct-2507")
# bench-text (Qwen3-0.6B shape, vocab 4096, untied), as core.tiny builds it
BENCH = {**tiny.BENCH_SHAPE, "vocab_size": 4096, "max_position_embeddings": 32768, "tie_word_embeddings": False}
TINY_VL = {"text_config": {**tiny.TEXT_SHAPE, "vocab_size": 4096, "max_position_embeddings": 32768},
           "vision_config": {**tiny.VISION_SHAPE, "out_hidden_size": 256, "in_channels": 3},
           "tie_word_embeddings": False}


def subj(cfg, fmt="bf16", name="m", max_model_len=8192, max_pixels=None, bf16_alias=None):
    return P.Subject(name, name, cfg, "test config", fmt, None, max_model_len, max_pixels, "test", bf16_alias)


# ---------------------------------------------------------------- nvidia-smi and the GPU pre-flight

def test_parse_nvidia_smi_csv():
    text = ("NVIDIA H200, 143771, 9.0\nTesla T4, 15360, 7.5\nNVIDIA A100-SXM4-80GB, 81920, [N/A]\n"
            "Weird, Name GPU, 24576, 8.9\nNVIDIA L4, 23034\ngarbage\n")
    gpus = P.parse_nvidia_smi(text)
    assert gpus[0] == Gpu("NVIDIA H200", 140.4, (9, 0))
    assert gpus[1] == Gpu("Tesla T4", 15.0, (7, 5))
    assert gpus[2] == Gpu("NVIDIA A100-SXM4-80GB", 80.0, None)
    assert gpus[3] == Gpu("Weird, Name GPU", 24.0, (8, 9))
    assert gpus[4] == Gpu("NVIDIA L4", 22.5, None)  # an old nvidia-smi without compute_cap
    assert len(gpus) == 5


@pytest.mark.parametrize("cap, kernel, dtype", [
    ((9, 0), "Machete", "bfloat16"),  # H100 / H200
    ((8, 9), "Marlin", "bfloat16"),  # L4, RTX 4090
    ((8, 0), "Marlin", "bfloat16"),  # A100
    ((7, 5), "Marlin", "float16"),  # T4: vLLM 0.32's Marlin starts at SM 7.5 (marlin.py get_min_capability 75)
    ((7, 0), None, "float16"),  # V100: no Marlin/Machete
    ((6, 1), None, "float16"),
])
def test_gpu_preflight_by_compute_capability(cap, kernel, dtype):
    pf = P.gpu_preflight(Gpu("gpu", 16.0, cap))
    assert (pf.kernel, pf.dtype) == (kernel, dtype)
    refusal = P.preflight_refusal(pf, "vl-gptq", "vl-fp16")
    assert (refusal is None) == (kernel is not None)


def test_gpu_below_marlin_refuses_w4a16_in_one_line():
    pf = P.gpu_preflight(Gpu("Tesla V100-SXM2-16GB", 16.0, (7, 0)))
    e = P.preflight_refusal(pf, "vl-gptq", "vl-fp16")
    line = e.line()
    assert "\n" not in line and line.startswith("error: GPU 'Tesla V100-SXM2-16GB' (SM 7.0) has no W4A16 kernel")
    assert "SM 7.5" in line and "vl-fp16 in float16" in line and " — " in line
    assert P.preflight_refusal(P.gpu_preflight(Gpu("x", 16.0, None)), "m", None) is None  # unknown: no refusal


def test_cli_refusal_is_one_line_and_nonzero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "serve", "--plan", "vl-gptq", "--gpu", "Tesla V100-SXM2-16GB, 16384, 7.0"],
                       cwd=REPO, capture_output=True, text=True, env={**_env(tmp_path)}, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: GPU 'Tesla V100-SXM2-16GB' (SM 7.0)")
    assert "gpu pre-flight     none" in r.stdout


# ---------------------------------------------------------------- sizes

def test_weight_estimates_match_the_bench_text_headers():
    """The W4A16 layout rule reproduces the safetensors headers of the bench-text exports to the byte
    (reports/cpu-2026-12-01: GPTQ 246,857,728 B, AWQ and AutoRound 245,710,848 B, bf16 897,712,128 B)."""
    total = {f: sum(P.estimate_weights(BENCH, f)[0].values()) for f in ("bf16", "gptq", "awq", "autoround", "gguf")}
    assert total["gptq"] == 246_857_728
    assert total["awq"] == total["autoround"] == 245_710_848
    assert abs(total["bf16"] - 897_712_128) < 0.001 * 897_712_128  # norms' layout aside
    assert abs(total["gguf"] - 268_926_976) < 0.01 * 268_926_976  # Q4_K_M (bits per weight measured on it)


def test_real_shape_weights_and_kv():
    bf16, _ = P.estimate_weights(VL8, "bf16")
    w4, how = P.estimate_weights(VL8, "gptq")
    assert round(sum(bf16.values()) / 1e9, 2) == 17.53 and round(sum(w4.values()) / 1e9, 2) == 7.26  # README: 7.3
    assert w4["vision"] == bf16["vision"] == 576_388_336 * 2 and w4["lm_head"] == bf16["lm_head"]  # stay 16-bit
    assert "W4A16 g128" in how
    t4 = P.estimate_weights(T4B, "bf16")[0]
    assert t4["lm_head"] == 0 and round(sum(t4.values()) / 1e9, 2) == 8.04
    assert P.kv_bytes_per_token(VL8) == 36 * 8 * 128 * 4 == kv_bytes_per_token(VL8["text_config"])
    with pytest.raises(UserError, match="no size estimate"):
        P.estimate_weights(VL8, "fp8")


def test_vision_budget_and_image_knob():
    vc = VL8["vision_config"]
    tokens, act, how = P.vision_budget(vc, 1024 * 1024)
    n = 4096  # patches of 16 px; 2 x 2 of them make one of the 1024 tokens
    assert tokens == 1024 and act == n * 1536 * 4 + n * (6 * 1152 + 2 * 4304) * 2 + 1024 * 4096 * 2 * 4
    assert how.startswith("estimate:")
    assert P.vision_budget(vc, 16_777_216)[0] == 16384 and P.vision_budget(vc, 16_777_216)[1] > 15 * act
    k = P.image_knob(1024 * 1024, 2)
    assert k["vllm"] == ["--mm-processor-kwargs", '{"max_pixels":1048576}', "--limit-mm-per-prompt",
                         '{"image":2,"video":0}']
    assert k["tokens_per_image"] == 1024 and k["llamacpp"].startswith("image_max_tokens 1024 ")
    assert P.image_knob(16_777_216, 1)["llamacpp"].startswith("image_max_tokens 4096 ")  # clip.cpp's Qwen-VL ceiling
    assert P.image_knob(65536, 3)["vllm"][3] == '{"image":3,"video":0}'


# ---------------------------------------------------------------- will it fit

def test_bf16_8b_on_23_gib_does_not_fit_or_only_short_w4_fits():
    """Qwen3-VL-8B bf16 (17.5 GB) on a 23.5 GiB machine with 21 GiB free: it does not fit, even with 1 MP images
    (vLLM's own 3.5 GB at the real vocabulary, measured); with 1.5 GiB more free, 1 MP images leave a short
    context; the W4A16 GPTQ (7.3 GB) fits 8192 tokens x 4."""
    no = P.make_plan(subj(VL8), CPU_23)
    assert no.status == "no" and no.max_context < P.MIN_CONTEXT and no.weights.bytes > 17.5e9
    assert P.make_plan(subj(VL8), CPU_23, max_pixels=1024 * 1024).status == "no"
    short = P.make_plan(subj(VL8), Hardware("Xeon", 2, AVX512, 24.0, 22.5, ()), max_pixels=1024 * 1024)
    assert short.status == "short" and P.MIN_CONTEXT <= short.max_context < 8192
    assert f"--max-model-len {short.max_context}" in short.command
    w4 = P.make_plan(subj(VL8, "gptq"), CPU_23)
    assert w4.status == "fits" and w4.max_context >= 8192 and w4.predicted.bytes < w4.budget.bytes
    text = "\n".join(P.lines(w4, CPU_23))
    for needle in ("estimate from test config", "W4A16 g128", "config: 36 layers", "measured: vLLM CPU",
                   "/proc/meminfo MemAvailable", "vLLM: --mm-processor-kwargs", "llama.cpp: image_max_tokens"):
        assert needle in text, needle


def test_context_scales_with_concurrency_and_is_capped_by_the_model():
    one = P.make_plan(subj(VL8, "gptq"), CPU_23, concurrency=1, max_pixels=1024 * 1024)
    four = P.make_plan(subj(VL8, "gptq"), CPU_23, concurrency=4, max_pixels=1024 * 1024)
    assert 3.9 < one.max_context / four.max_context < 4.1
    big = Hardware("big", 64, AVX512, 2048.0, 2000.0, ())
    assert P.make_plan(subj(T4B), big, concurrency=1).max_context == 262144  # max_position_embeddings
    with pytest.raises(UserError):
        P.make_plan(subj(T4B), big, concurrency=0)


def test_predictions_within_15_percent_of_measured_memory():
    """vLLM CPU and llama.cpp server RSS measured by bench (reports/cpu-2026-12-01 at the 0.6B shape, max_model_len /
    n_ctx 2048; reports/cpu-2026-12-04-shapes at the 4B shape)."""
    cases = [  # (subject, measured bytes)
        (subj(BENCH, "bf16", max_model_len=2048), 4_401_819_648),  # vLLM bf16 peak RSS
        (subj(BENCH, "gptq", max_model_len=2048), 3_640_807_424),  # vLLM GPTQ wna16 path
        (subj(BENCH, "gptq", max_model_len=2048), 3_831_914_496),  # vLLM GPTQ W4A8 path
        (subj(TINY_VL, "bf16", max_model_len=2048, max_pixels=65536), 3_287_838_720),  # vLLM tiny-vl
        (subj(BENCH, "gguf", max_model_len=2048), 823_541_760),  # llama.cpp Q4_K_M
        (subj(BENCH, "gguf-bf16", max_model_len=2048), 1_237_254_144),  # llama.cpp BF16
        # the real Qwen3-4B shape (reports/cpu-2026-12-04-shapes/text: context 4096, KV space 3 GiB, W4A8 path)
        (subj(T4B, "bf16", max_model_len=4096), 15_084_273_664),
        (subj(T4B, "gptq", max_model_len=4096), 10_478_112_768),
        (subj(T4B, "awq", max_model_len=4096), 10_411_134_976),
        (subj(T4B, "autoround", max_model_len=4096), 10_240_786_432),
        (subj(T4B, "gguf", max_model_len=4096), 5_265_043_456),  # llama.cpp Q4_K_M, n_ctx 4096
    ]
    for s, measured in cases:
        # llama.cpp's figures were measured on a server with one sequence of KV cache (llama-cpp-python's)
        p = P.make_plan(s, CPU_20, concurrency=1 if s.fmt.startswith("gguf") else 4)
        assert abs(p.predicted.bytes - measured) / measured < 0.15, (s.fmt, p.predicted.bytes, measured)


def test_gpu_plans():
    h200 = Gpu("NVIDIA H200", 140.4, (9, 0))
    hw = Hardware("Xeon", 16, AVX512, 128.0, 120.0, (Gpu("NVIDIA H200", 140.4),))
    p = P.make_plan(subj(VL8, "gptq"), hw, gpus=[h200], max_pixels=1024 * 1024)
    assert p.device == "cuda" and p.gpu.kernel == "Machete" and p.status == "fits"
    assert p.predicted.bytes == p.budget.bytes == int(140.4 * 2**30 * 0.9) and p.max_context > 100_000
    t4 = Gpu("Tesla T4", 15.0, (7, 5))
    q = P.make_plan(subj(VL8, "gptq"), Hardware("x", 4, AVX512, 32.0, 30.0, (Gpu("Tesla T4", 15.0),)), gpus=[t4],
                    max_pixels=1024 * 1024)
    assert q.gpu.kernel == "Marlin" and q.gpu.dtype == "float16" and q.command.endswith("--dtype float16")
    assert P.make_plan(subj(VL8, "bf16"), hw, gpus=[h200], device="cpu").device == "cpu"  # --device cpu wins


def test_llamacpp_plans_a_kv_cache_per_slot():
    one = P.make_plan(subj(VL8, "gguf", max_model_len=4096), CPU_23, concurrency=1)
    four = P.make_plan(subj(VL8, "gguf", max_model_len=4096), CPU_23, concurrency=4)
    assert four.engine == "llamacpp" and four.concurrency == 4 and four.command.endswith("--parallel 4")
    assert four.predicted.bytes - one.predicted.bytes == 3 * 4096 * P.kv_bytes_per_token(VL8)
    assert four.image["tokens_per_image"] == 16384 and P.vision_budget(VL8["vision_config"], 4096 * 1024)[1] == \
        four.image["activations"].bytes  # llama.cpp encodes at most 4096 tokens of an image


# ---------------------------------------------------------------- subjects: folders, catalog, CLI

def _env(tmp_path):
    import os

    return {**os.environ, "QWEN_W4_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def test_local_folder_weights_come_from_headers(tmp_path):
    small = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 4096}
    folder = tmp_path / "m"
    ids = {"bos": 0, "eos": 2, "pad": 0, "vision_start": 3, "vision_end": 4, "image": 5, "video": 6}
    res = shapes.write_checkpoint(shapes.text_config(small, ids), folder, max_shard_bytes=500_000)
    s = P.subject(str(folder))
    assert s.fmt == "bf16" and s.folder == folder.resolve()
    groups, src = P.header_weights(s.folder)
    assert sum(groups.values()) == res["total_size"] and src.startswith("header:")
    p = P.make_plan(s, CPU_20, weights=(groups, src))
    assert p.weights.source.startswith("header:") and p.image is None


def test_catalog_subjects_are_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    s = P.subject("shape-vl-gptq")
    assert s.fmt == "gptq" and s.folder is None and s.cfg == VL8 and "not built yet" in s.cfg_source
    assert s.max_pixels == tiny.IMAGE_PIXELS["max_pixels"] and s.bf16_alias == "shape-vl"
    assert not (tmp_path / "artifacts").exists()
    hub = P.subject("vl-awq")
    assert hub.fmt == "awq" and hub.max_pixels is None and hub.location.startswith("Vishva007/")
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        P.subject("someorg/never-downloaded-model")


def test_cli_prints_the_plan(tmp_path):
    # as on an idle 24 GB machine (the free RAM of a busy test machine would decide the verdict otherwise)
    r = subprocess.run([sys.executable, "-m", "serve", "--plan", "shape-vl-gptq", "--max-image-pixels", "1048576"],
                       cwd=REPO, capture_output=True, text=True, env={**_env(tmp_path), "QWEN_W4_MEM_AVAILABLE_GIB": "22"},
                       check=False)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("plan: shape-vl-gptq (gptq) on vllm (cpu)") and "7.26 GB" in out
    assert "--mm-processor-kwargs '{\"max_pixels\":1048576}'" in out and "command: python -m serve --model" in out
    r = subprocess.run([sys.executable, "-m", "serve", "--plan"], cwd=REPO, capture_output=True, text=True,
                       env=_env(tmp_path), check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: --plan needs a model")
    assert json.loads(json.dumps(P.image_knob(65536, 2)))  # plain data


def test_predict_uses_the_kv_space_the_server_was_started_with(tmp_path, monkeypatch):
    """bench compares its RSS with `fit.predict` for the server as started: the KV space given is the one counted."""
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    small = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 4096}
    folder = tmp_path / "m"
    ids = {"bos": 0, "eos": 2, "pad": 0, "vision_start": 3, "vision_end": 4, "image": 5, "video": 6}
    res = shapes.write_checkpoint(shapes.text_config(small, ids), folder, max_shard_bytes=500_000)
    one = P.predict(str(folder), CPU_20, concurrency=4, max_model_len=2048, kv_cache_gib=1)
    three = P.predict(str(folder), CPU_20, concurrency=4, max_model_len=2048, kv_cache_gib=3)
    assert one["kv_cache_gib"] == 1 and three["kv_cache_gib"] == 3 and one["engine"] == "vllm"
    assert three["predicted_bytes"] - one["predicted_bytes"] == 2 * 2**30
    assert one["weights_bytes"] == res["total_size"] and one["context"] == 2048
    assert one["predicted_bytes"] == (one["weights_bytes"] + one["overhead_bytes"] + 2**30 + one["activations_bytes"]
                                      + one["vision_bytes"])


# ---------------------------------------------------------------- what to serve instead when it does not fit

AVX2_ONLY = Hardware("EPYC", 2, ("avx2",), 23.5, 20.0, ())
AVX512_NO_VNNI = Hardware("Xeon", 2, ("avx2", "avx512f", "avx512bw"), 23.5, 20.0, ())


def test_four_bit_alternative_follows_the_measured_fast_path():
    """GPTQ where vLLM's W4A8 (VNNI/AMX CPUs) or Marlin/Machete (GPU) runs it; the GGUF variant on llama.cpp where
    vLLM's only 4-bit CPU path is slower than bf16 (no VNNI) or missing (AVX2)."""
    gpu = Hardware("Xeon", 16, AVX512, 128.0, 120.0, (Gpu("NVIDIA H200", 140.4),))
    assert P.four_bit_alternative("shape-vl", CPU_20) == "shape-vl-gptq"
    assert P.four_bit_alternative("vl-fp16", gpu) == "vl-gptq"
    assert P.four_bit_alternative("shape-vl", AVX2_ONLY) == "shape-vl-gguf"
    assert P.four_bit_alternative("shape-text", AVX512_NO_VNNI) == "shape-text-gguf"
    assert P.four_bit_alternative("shape-vl-gptq", AVX2_ONLY) == "shape-vl-gguf"  # refused W4A16 -> GGUF
    assert P.four_bit_alternative("shape-vl-gptq", CPU_20) is None  # it is the alternative
    assert P.four_bit_alternative("/some/folder", CPU_20) is None


def test_a_plan_that_does_not_fit_prints_the_four_bit_command_instead():
    small = Hardware("EPYC", 2, AVX512, 20.0, 18.0, ())  # bf16 8B-VL needs ~22 GB, GPTQ ~14
    p = P.make_plan(subj(VL8, "bf16", name="shape-vl", max_model_len=4096), small, concurrency=1)
    assert p.status == "no"
    alt = P.make_plan(subj(VL8, "gptq", name="shape-vl-gptq", max_model_len=4096), small, concurrency=1)
    assert alt.status in ("fits", "short")
    out = P.lines(p, small, alt)
    assert any(line.startswith(f"  instead: shape-vl-gptq (gptq) on vllm: {alt.status}") for line in out)
    assert out[-1] == f"  command: {alt.command}" and "--model shape-vl-gptq" in out[-1]
    assert not any("--model shape-vl " in line for line in out)  # its own command is not offered
    none = P.lines(p, small)
    assert none[-1].startswith("  command: none fits here") and "instead" not in "".join(none)
    tiny_ram = Hardware("EPYC", 2, AVX512, 4.0, 3.0, ())
    nothing = P.make_plan(subj(VL8, "gptq", name="shape-vl-gptq", max_model_len=4096), tiny_ram, concurrency=1)
    assert P.lines(p, tiny_ram, nothing)[-1].startswith("  command: none fits here, not even 4-bit")
    assert P.lines(alt, small)[-1] == f"  command: {alt.command}"  # a plan that fits keeps its own command


def test_cli_offers_the_four_bit_variant_when_the_model_does_not_fit(tmp_path, monkeypatch, capsys):
    import core.hardware

    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    monkeypatch.setattr(core.hardware, "detect", lambda: Hardware("EPYC", 2, ("avx2",), 16.0, 14.0, ()))
    assert P.main(["--plan", "shape-vl", "--max-model-len", "4096", "--concurrency", "1"]) == 0
    out = capsys.readouterr().out
    assert "verdict            no" in out and "instead: shape-vl-gguf (gguf) on llamacpp" in out
    assert "command: python -m serve --model shape-vl-gguf" in out
