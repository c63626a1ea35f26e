"""vLLM's argv/env from artifact config x hardware x options (serve.args), failure explanations
(serve.engines.vllm.likely_cause) and image parts (serve.client): pure functions, no process started."""
from __future__ import annotations

import io
import json

import pytest

from core import catalog
from core.errors import UserError
from core.hardware import Gpu, Hardware
from serve.args import (
    MASK,
    ModelInfo,
    ServeOptions,
    cpu_agreement,
    cpu_int4,
    cpu_int4_line,
    info_from_config,
    is_loopback,
    kv_cache_gib,
    model_info,
    read_config,
    shown_command,
    vllm_command,
)

CPU_AVX2 = Hardware("AMD EPYC", 2, ("avx2",), 23.5, 20.0, ())
CPU_AVX512 = Hardware("Xeon", 2, ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw"), 23.5, 20.0, ())
CPU_AVX512_NO_VNNI = Hardware("Xeon", 2, ("avx2", "avx512f", "avx512bw"), 23.5, 20.0, ())
CPU_AMX = Hardware("Xeon", 2, ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16"), 23.5, 20.0)
GPU1 = Hardware("Xeon", 16, ("avx2", "avx512f"), 128.0, 120.0, (Gpu("NVIDIA H100", 80.0),))
GPU2 = Hardware("Xeon", 16, ("avx2", "avx512f"), 128.0, 120.0, (Gpu("NVIDIA H100", 80.0),) * 2)
HW = {"cpu-avx2": CPU_AVX2, "cpu-avx512": CPU_AVX512, "gpu": GPU1}

TEXT_CFG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "dtype": "bfloat16",
            "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 64}
VL_CFG = {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
          "text_config": {**TEXT_CFG, "dtype": "bfloat16"}, "vision_config": {"depth": 2}}
QUANT = {  # quantization_config as AutoRound 0.16.1 writes it (see NOTES.md)
    "bf16": None,
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": False},
    "autoround": {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
                  "packing_format": "auto_round:auto_gptq"},
    "compressed-tensors": {"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
        "group_0": {"weights": {"num_bits": 4, "type": "int", "group_size": 128}, "input_activations": None}}},
}


def cfg(modality: str, fmt: str) -> dict:
    c = json.loads(json.dumps(VL_CFG if modality == "vl" else TEXT_CFG))
    if QUANT[fmt]:
        c["quantization_config"] = json.loads(json.dumps(QUANT[fmt]))
        c["dtype"] = "float16"  # AutoRound's GPTQ/AWQ exports write float16
    return c


def info(modality="vl", fmt="bf16", **kw) -> ModelInfo:
    base = {"location": f"/art/tiny-{modality}", "served_name": f"tiny-{modality}", "source": "local",
            "max_model_len": 2048}
    base.update(kw)
    return info_from_config(cfg(modality, fmt), **base)


def flags(argv: list[str]) -> dict[str, str | bool]:
    """--flag value / --flag (bool) pairs of an argv after the module name."""
    out, i, rest = {}, 0, argv[3:]
    while i < len(rest):
        a = rest[i]
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            out[a] = rest[i + 1]
            i += 2
        else:
            out[a] = True
            i += 1
    return out


# ---------------------------------------------------------------- config -> ModelInfo

@pytest.mark.parametrize("fmt,method", [("bf16", None), ("gptq", "gptq"), ("awq", "awq"),
                                        ("autoround", "auto-round"), ("compressed-tensors", "compressed-tensors")])
@pytest.mark.parametrize("modality", ["text", "vl"])
def test_info_from_config(modality, fmt, method):
    i = info(modality, fmt)
    assert i.modality == modality
    assert i.quant_method == method
    assert i.is_w4a16 == (fmt != "bf16")
    assert i.kv_bytes_per_token == 2 * 2 * 64 * 2 * 2  # layers x kv heads x head_dim x (K,V) x bf16


def test_info_w8a8_compressed_tensors_is_not_w4a16():
    c = cfg("text", "compressed-tensors")
    c["quantization_config"]["config_groups"]["group_0"] = {
        "weights": {"num_bits": 8, "type": "int"}, "input_activations": {"num_bits": 8, "type": "int"}}
    assert not info_from_config(c, location="/x", served_name="x").is_w4a16


def test_read_config_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": [')
    with pytest.raises(UserError, match="not valid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a JSON object"):
        read_config(tmp_path)


# ---------------------------------------------------------------- the mapping, text/VL x formats x hardware

def test_exact_cpu_command_tiny_vl():
    argv, env = vllm_command(info("vl"), CPU_AVX2, ServeOptions(port=8123, python="py"))
    assert argv == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", "/art/tiny-vl",
                    "--served-model-name", "tiny-vl", "--host", "127.0.0.1", "--port", "8123",
                    "--dtype", "bfloat16", "--load-format", "safetensors", "--max-model-len", "2048",
                    "--limit-mm-per-prompt", '{"image":2,"video":0}', "--enforce-eager"]
    assert env == {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "VLLM_HOST_IP": "127.0.0.1"}


@pytest.mark.parametrize("hw_name", list(HW))
@pytest.mark.parametrize("fmt", list(QUANT))
@pytest.mark.parametrize("modality", ["text", "vl"])
def test_mapping_matrix(modality, fmt, hw_name):
    hw, i = HW[hw_name], info(modality, fmt)
    opts = ServeOptions(python="py")
    if fmt != "bf16" and hw_name == "cpu-avx2":
        with pytest.raises(UserError) as e:
            vllm_command(i, hw, opts)
        assert "AVX-512" in e.value.what and "tiny" in e.value.what
        assert "bf16 variant" in e.value.todo and "GPU" in e.value.todo
        argv, env = vllm_command(i, hw, ServeOptions(python="py", force=True))  # --force: start it anyway
    else:
        argv, env = vllm_command(i, hw, opts)
    f = flags(argv)
    assert "--quantization" not in argv  # vLLM picks the kernel from the checkpoint
    assert f["--served-model-name"] == f"tiny-{modality}"
    assert f["--dtype"] == "bfloat16"  # also for GPTQ/AWQ exports whose config says float16
    assert ("--limit-mm-per-prompt" in f) == (modality == "vl")
    assert env["HF_HUB_OFFLINE"] == "1"
    if hw.has_gpu:
        assert f["--gpu-memory-utilization"] == "0.9" and f["--tensor-parallel-size"] == "1"
        assert "--enforce-eager" not in f  # CUDA graphs on GPU
        assert "VLLM_CPU_KVCACHE_SPACE" not in env
    else:
        assert f["--enforce-eager"] is True
        assert "--gpu-memory-utilization" not in f and "--tensor-parallel-size" not in f
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["VLLM_HOST_IP"] == "127.0.0.1"


@pytest.mark.parametrize("hw,requested,path", [
    (CPU_AVX512, "auto", "w4a8"), (CPU_AMX, "auto", "w4a8"), (CPU_AVX512_NO_VNNI, "auto", "w4a16"),
    (CPU_AVX512, "w4a16", "w4a16"), (CPU_AMX, "w4a16", "w4a16"), (GPU1, "auto", None), (GPU1, "w4a8", None)])
def test_cpu_int4_path(hw, requested, path):
    assert cpu_int4(info("vl", "gptq"), hw, requested) == path
    assert cpu_int4(info("vl", "bf16"), hw, requested) is None  # 16-bit: nothing to choose
    _, env = vllm_command(info("vl", "gptq"), hw, ServeOptions(python="py", cpu_int4=requested))
    assert env.get("QWEN_W4_CPU_INT4") == ("w4a8" if path == "w4a8" and hw is not CPU_AMX else None)
    assert env.get("VLLM_CPU_INT4_W4A8") == {"w4a8": "1", "w4a16": "0", None: None}[path]
    _, env16 = vllm_command(info("vl", "bf16"), hw, ServeOptions(python="py", cpu_int4=requested))
    assert "QWEN_W4_CPU_INT4" not in env16 and "VLLM_CPU_INT4_W4A8" not in env16


@pytest.mark.parametrize("hw,path,exact", [
    (CPU_AVX2, None, True), (CPU_AVX512, None, True), (CPU_AVX512, "w4a16", True), (CPU_AVX512, "w4a8", False),
    (CPU_AMX, None, False), (CPU_AMX, "w4a16", False), (CPU_AMX, "w4a8", False), (GPU1, None, False)])
def test_cpu_agreement_per_path(hw, path, exact):
    """Bit-exact greedy agreement with transformers only where vLLM's CPU GEMMs do bf16 math without AMX tiles."""
    got, why = cpu_agreement(hw, path)
    assert got is exact and why
    if hw is CPU_AMX:
        assert ("AMX" in why) != (path == "w4a8") and ("int8" in why) == (path == "w4a8")


def test_cpu_int4_line_names_kernel_choice_and_exactness():
    amx = cpu_int4_line(info("vl", "gptq"), CPU_AMX)
    assert amx.startswith("cpu int4: w4a8 (int4_scaled_mm_cpu") and "AMX tiles" in amx and "vLLM's own choice" in amx
    assert "not bit-exact" in amx
    exact = cpu_int4_line(info("vl", "gptq"), CPU_AVX512, "w4a16")
    assert "cpu_gemm_wna16" in exact and "--cpu-int4 w4a16" in exact and "tokens equal transformers" in exact
    assert "serve's choice" in cpu_int4_line(info("vl", "awq"), CPU_AVX512)
    assert "AutoRound's own CPU kernel" in cpu_int4_line(info("vl", "autoround"), CPU_AMX, "w4a8")
    assert cpu_int4_line(info("vl", "bf16"), CPU_AMX) is None and cpu_int4_line(info("vl", "gptq"), GPU1) is None
    assert "\n" not in amx


def test_avx512_without_bf16_has_no_w4a8_kernel():
    """vLLM 0.32 loads its full CPU library only with AVX512_BF16; an Ice Lake class CPU (AVX-512 VNNI, no BF16) gets
    _C_AVX512, which lacks W4A8: auto takes wna16 there, an explicit w4a8 is refused in one line."""
    ice = Hardware("Xeon (Ice Lake)", 2, ("avx2", "avx512f", "avx512_vnni", "avx512bw"), 23.5, 20.0, ())
    assert not ice.w4a8_kernel[0] and "AVX512_BF16" in ice.w4a8_kernel[1] and not ice.w4a8_default
    assert cpu_int4(info("vl", "gptq"), ice) == "w4a16" and "cpu_gemm_wna16" in ice.cpu_int4_path
    with pytest.raises(UserError) as e:
        cpu_int4(info("vl", "gptq"), ice, "w4a8")
    assert "--cpu-int4 w4a8 cannot run here" in e.value.line() and "--cpu-int4 w4a16" in e.value.todo
    _, env = vllm_command(info("vl", "gptq"), ice, ServeOptions(python="py"))
    assert "QWEN_W4_CPU_INT4" not in env and env["VLLM_CPU_INT4_W4A8"] == "0"
    assert CPU_AVX512.w4a8_kernel[0] and CPU_AVX512.w4a8_default and CPU_AMX.w4a8_default


def test_cpu_int4_unknown_path():
    with pytest.raises(UserError) as e:
        cpu_int4(info("vl", "gptq"), CPU_AVX512, "w2a8")
    assert "w2a8" in e.value.what and "--cpu-int4" in e.value.todo


def test_options_override_defaults():
    opts = ServeOptions(python="py", max_model_len=4096, served_name="mine", images_per_prompt=4, enforce_eager=False,
                        kv_cache_gib=6, port=9000, extra_args=("--max-num-seqs", "8", "--enforce-eager"))
    argv, env = vllm_command(info("vl"), CPU_AVX512, opts)
    f = flags(argv)
    assert f["--max-model-len"] == "4096" and f["--served-model-name"] == "mine" and f["--port"] == "9000"
    assert f["--limit-mm-per-prompt"] == '{"image":4,"video":0}'
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "6"
    assert argv[-3:] == ["--max-num-seqs", "8", "--enforce-eager"]  # extras verbatim, last
    assert argv.count("--enforce-eager") == 1  # only the user's


def test_gpu_dtype_for_non_qwen_follows_config():
    i = info_from_config({"architectures": ["LlamaForCausalLM"], "dtype": "float16"}, location="/m", served_name="m")
    assert flags(vllm_command(i, GPU1, ServeOptions())[0])["--dtype"] == "auto"
    assert flags(vllm_command(i, CPU_AVX512, ServeOptions())[0])["--dtype"] == "bfloat16"


def test_gpu_dtype_is_float16_below_compute_capability_8():
    i = info("vl", "gptq")
    t4 = Hardware("Xeon", 8, ("avx2",), 64.0, 60.0, (Gpu("Tesla T4", 15.0, (7, 5)),))
    h100 = Hardware("Xeon", 8, ("avx2",), 64.0, 60.0, (Gpu("NVIDIA H100", 80.0, (9, 0)),))
    assert flags(vllm_command(i, t4, ServeOptions())[0])["--dtype"] == "float16"  # no bf16 before Ampere
    assert flags(vllm_command(i, h100, ServeOptions())[0])["--dtype"] == "bfloat16"
    assert flags(vllm_command(i, GPU1, ServeOptions())[0])["--dtype"] == "bfloat16"  # unknown capability


def test_hub_model_keeps_hub_access():
    i = ModelInfo(location="Qwen/Qwen3-VL-8B-Instruct", served_name="vl-fp16", source="hub", modality="vl")
    _, env = vllm_command(i, GPU1, ServeOptions())
    assert "HF_HUB_OFFLINE" not in env


# ---------------------------------------------------------------- every catalog alias with a Hub id, pinned

PUBLISHED = sorted(a for a, v in catalog.VARIANTS.items() if v.hub_id)


def test_vl_gptq_gpu_command_pinned():
    v = catalog.variant("vl-gptq")
    i = model_info(catalog.Resolved("vl-gptq", "hub", v.hub_id, v))
    argv, env = vllm_command(i, GPU1, ServeOptions(python="python"))
    assert argv == ["python", "-m", "vllm.entrypoints.openai.api_server",
                    "--model", "Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound-GPTQ",
                    "--served-model-name", "vl-gptq", "--host", "127.0.0.1", "--port", "8000",
                    "--dtype", "bfloat16", "--load-format", "safetensors", "--max-model-len", "8192",
                    "--limit-mm-per-prompt", '{"image":2,"video":0}',
                    "--gpu-memory-utilization", "0.9", "--tensor-parallel-size", "1"]
    assert env == {"VLLM_NO_USAGE_STATS": "1"}


@pytest.mark.parametrize("alias", PUBLISHED)
@pytest.mark.parametrize("hw_name", list(HW))
def test_published_aliases(alias, hw_name):
    v = catalog.variant(alias)
    i = model_info(catalog.Resolved(alias, "hub", v.hub_id, v))
    hw = HW[hw_name]
    if v.is_quantized and hw_name == "cpu-avx2":
        with pytest.raises(UserError, match="AVX-512"):
            vllm_command(i, hw, ServeOptions())
        return
    argv, env = vllm_command(i, hw, ServeOptions())
    f = flags(argv)
    assert f["--model"] == v.hub_id and f["--served-model-name"] == alias
    assert f["--max-model-len"] == "8192" and f["--dtype"] == "bfloat16"
    assert ("--limit-mm-per-prompt" in f) == (v.modality == "vl")
    assert "--quantization" not in argv and "HF_HUB_OFFLINE" not in env
    assert ("--gpu-memory-utilization" in f) == hw.has_gpu
    assert ("VLLM_CPU_KVCACHE_SPACE" in env) == (not hw.has_gpu)


# ---------------------------------------------------------------- API key, host, masking

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.2", "::1", "[::1]"])
def test_loopback_needs_no_key(host):
    assert is_loopback(host)
    argv, env = vllm_command(info(), CPU_AVX2, ServeOptions(host=host))
    assert "VLLM_API_KEY" not in env and "--api-key" not in argv


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_non_loopback_needs_key(host):
    assert not is_loopback(host)
    with pytest.raises(UserError) as e:
        vllm_command(info(), CPU_AVX2, ServeOptions(host=host))
    assert "--api-key" in e.value.todo and "QWEN_W4_API_KEY" in e.value.todo
    argv, env = vllm_command(info(), CPU_AVX2, ServeOptions(host=host, api_key="s3cr3t"))
    assert env["VLLM_API_KEY"] == "s3cr3t" and "s3cr3t" not in argv  # not visible in `ps`
    vllm_command(info(), CPU_AVX2, ServeOptions(host=host, extra_args=("--api-key", "k2")))  # a key in extras counts


def test_default_api_key_from_env(monkeypatch):
    from serve.args import default_api_key

    monkeypatch.delenv("QWEN_W4_API_KEY", raising=False)
    assert default_api_key() is None
    monkeypatch.setenv("QWEN_W4_API_KEY", "from-env")
    assert default_api_key() == "from-env"


def test_secrets_are_masked():
    argv, env = vllm_command(info(), CPU_AVX2, ServeOptions(
        host="0.0.0.0", api_key="s3cr3t", extra_args=("--api-key", "other-key", "--api-key=third-key")))
    line = shown_command(argv, {**env, "HF_TOKEN": "hf_tok"})
    for secret in ("s3cr3t", "other-key", "third-key", "hf_tok"):
        assert secret not in line
    assert f"VLLM_API_KEY={MASK}" in line and "--api-key=" + MASK in line
    assert "--limit-mm-per-prompt '{\"image\":2,\"video\":0}'" in line  # shell-quoted, copy-pastable


# ---------------------------------------------------------------- parallelism

def test_tensor_parallel_checked_against_gpus():
    with pytest.raises(UserError) as e:
        vllm_command(info(), GPU1, ServeOptions(tensor_parallel_size=2))
    assert "needs 2 GPUs, 1 visible" in e.value.what and "ray" in e.value.todo
    f = flags(vllm_command(info(), GPU2, ServeOptions(tensor_parallel_size=2))[0])
    assert f["--tensor-parallel-size"] == "2" and "--pipeline-parallel-size" not in f
    with pytest.raises(UserError, match="needs 4 GPUs, 2 visible"):
        vllm_command(info(), GPU2, ServeOptions(tensor_parallel_size=2, pipeline_parallel_size=2))
    with pytest.raises(UserError, match="at least 1"):
        vllm_command(info(), GPU2, ServeOptions(tensor_parallel_size=0))


def test_multi_node_ray():
    argv, _ = vllm_command(info(), GPU2, ServeOptions(tensor_parallel_size=2, pipeline_parallel_size=4,
                                                      distributed_backend="ray"))
    f = flags(argv)
    assert f["--tensor-parallel-size"] == "2" and f["--pipeline-parallel-size"] == "4"
    assert f["--distributed-executor-backend"] == "ray"


def test_parallel_on_cpu_refused():
    with pytest.raises(UserError, match="need GPUs"):
        vllm_command(info(), CPU_AVX512, ServeOptions(tensor_parallel_size=2))


# ---------------------------------------------------------------- CPU KV cache size

def test_kv_cache_sizing():
    tiny = info("text")
    assert kv_cache_gib(tiny, CPU_AVX512, 2048) == 1  # at least 1 GiB
    big = ModelInfo(location="/m", served_name="m", kv_bytes_per_token=36 * 8 * 128 * 2 * 2)  # Qwen3-VL-8B
    assert kv_cache_gib(big, CPU_AVX512, 8192) == 5  # 4 sequences x 8192 tokens x 144 KiB
    assert kv_cache_gib(big, CPU_AVX512, 262144) == 5  # capped at a quarter of the free RAM (20 GiB)
    assert kv_cache_gib(ModelInfo(location="/m", served_name="m"), CPU_AVX512, None) == 4  # unknown model


# ---------------------------------------------------------------- failure explanations (serve.server)

@pytest.mark.parametrize("line,cause", [
    ("AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'", "kernel"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
    ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
     "out of memory"),
    ("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
     "port"),
    ("ValueError: Unknown quantization method: foo. Must be one of ['awq', ...]", "quantization"),
    (("ValueError: The model's max seq len (8192) is larger than the maximum number of tokens that can be stored in "
      "KV cache (4096). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`"), "context length"),
    ("ModuleNotFoundError: No module named 'vllm'", "not (properly) installed"),
    ("(EngineCore pid=1) ValueError: something odd happened", "ValueError: something odd happened"),
])
def test_likely_cause(line, cause):
    from serve.engines.vllm import likely_cause

    got, todo = likely_cause(["INFO starting", "Traceback (most recent call last):", line])
    assert cause in got and todo


def test_likely_cause_sigkill():
    from serve.engines.vllm import likely_cause

    assert "SIGKILL" in likely_cause(["INFO loading"], -9)[0]


# ---------------------------------------------------------------- image parts (serve.client)

def _png(size=(8, 6)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_part_sources(tmp_path):
    import base64

    from PIL import Image

    from serve.client import image_part, user_message

    p = tmp_path / "red.png"
    p.write_bytes(_png())
    for src in (p, str(p), _png(), Image.new("RGB", (8, 6))):
        part = image_part(src)
        assert part["type"] == "image_url"
        url = part["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (8, 6)
    bmp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, format="BMP")
    assert image_part(bmp.getvalue())["image_url"]["url"].startswith("data:image/png;base64,")  # re-encoded
    msg = user_message("what is it?", [p])
    assert msg["role"] == "user" and [c["type"] for c in msg["content"]] == ["image_url", "text"]
    assert user_message("hi") == {"role": "user", "content": "hi"}


def test_image_part_errors(tmp_path):
    from serve.client import image_part

    with pytest.raises(UserError, match="image not found"):
        image_part(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="not a readable image"):
        image_part(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="larger than"):
        image_part(_png((512, 512)), max_bytes=100)
    with pytest.raises(UserError, match="URLs are not allowed"):
        image_part("https://example.com/cat.png")
    with pytest.raises(UserError, match="cannot send"):
        image_part(12345)


def test_log_excerpt_and_root_cause():
    """Lines as vLLM CPU 0.32 wrote them when a W4A16 request hit the missing int4 kernel."""
    from serve.engines.vllm import likely_cause
    from serve.process import excerpt

    log = [
        ("(Worker pid=1) WARNING 11-23 18:54:30 [utils.py:597] Failed to create oneDNN linear, fallback to torch "
         "linear. Exception: could not create a primitive descriptor"),
        "(Worker pid=1) ERROR 11-23 18:54:33 [multiproc_executor.py:1063] Traceback (most recent call last):",
        ("(Worker pid=1) ERROR 11-23 18:54:33 [multiproc_executor.py:1063] AttributeError: '_OpNamespace' '_C' "
         "object has no attribute 'cpu_gemm_wna16'"),
        ("(EngineCore pid=2) ERROR 11-23 18:54:33 [core.py:1512] RuntimeError: Worker failed with error "
         "''_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16''"),
        ("(APIServer pid=3) ERROR 11-23 18:54:33 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: "
         "EngineCore encountered an issue. See stack trace (above) for the root cause."),
        ("(APIServer pid=3) ERROR 11-23 18:54:33 [serving.py:929] vllm.v1.engine.exceptions.EngineDeadError: "
         "EngineCore encountered an issue. See stack trace (above) for the root cause."),
        "INFO:     Finished server process [3]",
        "nanobind: leaked 4 instances!",
        ' - leaked type "triton._C.libtriton.ir.location"',
        " - ... skipped remainder",
    ]
    assert likely_cause(log)[0].startswith("a kernel this checkpoint needs is missing")
    shown = excerpt(log, 10)
    assert shown[0].endswith("no attribute 'cpu_gemm_wna16'") and "..." in shown
    assert sum("EngineDeadError" in ln for ln in shown[:shown.index("...")]) == 1  # each exception once
    assert not any("leaked" in ln or "Failed to create oneDNN" in ln for ln in shown)
    generic = [ln.replace("cpu_gemm_wna16", "some_attr") for ln in log]
    assert likely_cause(generic)[0] == "AttributeError: '_OpNamespace' '_C' object has no attribute 'some_attr'"


def test_autoround_on_a_cpu_says_what_to_serve_instead(tmp_path, monkeypatch):
    """vLLM runs AutoRound checkpoints with AutoRound's CPU kernel, measured slower than bf16 at every shape: serve's
    kernel line says so and names the GPTQ variant of the same model (the W4A8 path)."""
    line = cpu_int4_line(info("vl", "autoround"), CPU_AVX512)
    assert "slower than the 16-bit model" in line and "GPTQ or AWQ" in line and "\n" not in line
    assert "slower" not in cpu_int4_line(info("vl", "gptq"), CPU_AVX512)
    from core import shapes
    from serve.engines import vllm

    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    folder = tmp_path / "artifacts" / "tiny-text-autoround"
    small = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 4096}
    shapes.write_checkpoint(shapes.text_config(small, {"bos": 0, "eos": 2, "pad": 0, "vision_start": 3,
                                                       "vision_end": 4, "image": 5, "video": 6}), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
                                  "packing_format": "auto_round:auto_gptq"}
    (folder / "config.json").write_text(json.dumps(cfg))
    lp = vllm.plan("tiny-text-autoround", ServeOptions(max_model_len=2048), CPU_AVX512)
    assert any("slower than the 16-bit model" in n and "(here: tiny-text-gptq)" in n for n in lp.notes)
