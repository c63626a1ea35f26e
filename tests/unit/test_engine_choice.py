"""`--engine auto|vllm|llamacpp`: the rules of serve/engine.py on hand-made hardware (AVX2 only, AVX-512 without
AMX, AMX, GPU) and hand-made local catalogs, plus what `auto` picks on this machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from core import catalog
from core.errors import UserError
from core.hardware import Gpu, Hardware, detect
from serve.engine import choose_engine, gguf_variant_path

AVX2 = Hardware("AMD EPYC (AVX2)", 2, ("avx2",), 24.0, 20.0)
AVX512 = Hardware("Xeon (AVX-512, no AMX)", 8, ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw"), 64, 60)
AMX = Hardware("Xeon Sapphire Rapids", 8, ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw", "amx_tile",
                                           "amx_bf16", "amx_int8"), 64, 60)
GPU = Hardware("Xeon + H100", 16, ("avx2", "avx512f"), 128, 120, (Gpu("NVIDIA H100", 80.0),))


def res(alias: str, location: str = "/nowhere") -> catalog.Resolved:
    return catalog.Resolved(alias, "local", location, catalog.variant(alias))


def gguf_folder(tmp_path: Path, alias: str) -> Path:
    d = tmp_path / alias
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / f"{alias}.gguf").write_bytes(b"GGUF")
    return d


@pytest.fixture
def with_variants(tmp_path):
    """A catalog where tiny-text has both GGUF variants locally."""
    q4 = gguf_folder(tmp_path, "tiny-text-gguf")
    bf = gguf_folder(tmp_path, "tiny-text-gguf-bf16")

    def find(base: str, bf16: bool):
        return (bf if bf16 else q4) if base == "tiny-text" else None
    return find, q4, bf


def none(base, bf16):
    return None


@pytest.mark.parametrize("hw", [AVX2, AVX512, AMX, GPU], ids=["avx2", "avx512", "amx", "gpu"])
def test_gguf_artifact_is_llamacpp_everywhere(tmp_path, hw):
    d = gguf_folder(tmp_path, "tiny-text-gguf")
    c = choose_engine(res("tiny-text-gguf", str(d)), hw, "auto", find_variant=none, llamacpp_ok=True)
    assert c.engine == "llamacpp" and "GGUF" in c.reason and c.model is None
    engine, reason = c  # unpacks as (engine, reason)
    assert engine == "llamacpp" and reason == c.reason
    assert choose_engine(res("tiny-text-gguf", str(d)), hw, "llamacpp", find_variant=none,
                         llamacpp_ok=True).engine == "llamacpp"


def test_vllm_for_a_gguf_is_a_one_line_error(tmp_path):
    d = gguf_folder(tmp_path, "tiny-text-gguf")
    with pytest.raises(UserError) as e:
        choose_engine(res("tiny-text-gguf", str(d)), AVX2, "vllm", find_variant=none, llamacpp_ok=True)
    assert "GGUF" in e.value.line() and "--engine llamacpp" in e.value.line() and "\n" not in e.value.line()


def test_gguf_without_llamacpp_installed_says_how_to_install(tmp_path):
    d = gguf_folder(tmp_path, "tiny-text-gguf")
    with pytest.raises(UserError) as e:
        choose_engine(res("tiny-text-gguf", str(d)), AVX2, "auto", find_variant=none, llamacpp_ok=False)
    assert "not installed" in e.value.line() and ".[llamacpp]" in e.value.line()


@pytest.mark.parametrize("hw,why", [(AVX2, "no AVX-512"), (AVX512, "no AMX")], ids=["avx2", "avx512"])
def test_auto_on_cpu_without_amx_prefers_the_gguf_variant(with_variants, hw, why):
    find, q4, bf = with_variants
    for alias in ("tiny-text-awq", "tiny-text-gptq", "tiny-text-autoround"):
        c = choose_engine(res(alias), hw, "auto", find_variant=find, llamacpp_ok=True)
        assert (c.engine, c.model) == ("llamacpp", str(q4)) and why in c.reason and "tiny-text-gguf" in c.reason
    c = choose_engine(res("tiny-text"), hw, "auto", find_variant=find, llamacpp_ok=True)
    assert (c.engine, c.model) == ("llamacpp", str(bf)) and "16-bit" in c.reason


def test_auto_without_a_gguf_variant_stays_on_vllm_and_says_how_to_make_one():
    c = choose_engine(res("tiny-text-awq"), AVX2, "auto", find_variant=none, llamacpp_ok=True)
    assert c.engine == "vllm" and c.model is None
    assert "--formats gguf" in c.reason and "tiny-text-gguf" in c.reason and "no AVX-512" in c.reason


def test_auto_without_llamacpp_installed_stays_on_vllm(with_variants):
    find, _, _ = with_variants
    c = choose_engine(res("tiny-text-awq"), AVX512, "auto", find_variant=find, llamacpp_ok=False)
    assert c.engine == "vllm" and "not installed" in c.reason


@pytest.mark.parametrize("hw,word", [(AMX, "AMX"), (GPU, "GPU")], ids=["amx", "gpu"])
def test_auto_on_amx_or_gpu_is_vllm_even_with_a_gguf_variant(with_variants, hw, word):
    find, _, _ = with_variants
    for alias in ("tiny-text-awq", "tiny-text"):
        c = choose_engine(res(alias), hw, "auto", find_variant=find, llamacpp_ok=True)
        assert c.engine == "vllm" and c.model is None and word in c.reason


@pytest.mark.parametrize("hw,engine", [(AVX2, "llamacpp"), (AVX512, "llamacpp"), (AMX, "vllm"), (GPU, "vllm")],
                         ids=["avx2", "avx512", "amx", "gpu"])
def test_vl_follows_the_same_rules_with_its_projector(tmp_path, hw, engine):
    """A VL family's GGUF variant counts only with its vision projector beside it (llama.cpp's mtmd needs it)."""
    q4 = gguf_folder(tmp_path, "tiny-vl-gguf")
    find = lambda b, bf16: gguf_variant_path(b, bf16, tmp_path)  # the real lookup
    assert find("tiny-vl", False) is None  # the language model alone: no images, not a variant
    with pytest.raises(UserError) as e:
        choose_engine(res("tiny-vl-awq"), hw, "llamacpp", find_variant=find, llamacpp_ok=True)
    assert "no local GGUF variant (tiny-vl-gguf)" in e.value.line() and "--formats gguf" in e.value.line()
    assert choose_engine(res("tiny-vl-awq"), hw, "auto", find_variant=find, llamacpp_ok=True).engine == "vllm"

    (q4 / "mmproj-tiny-vl-F16.gguf").write_bytes(b"GGUF")
    assert find("tiny-vl", False) == q4 and find("tiny-vl", True) is None
    c = choose_engine(res("tiny-vl-awq"), hw, "auto", find_variant=find, llamacpp_ok=True)
    assert c.engine == engine and (c.model == str(q4) if engine == "llamacpp" else c.model is None), c
    assert choose_engine(res("tiny-vl-awq"), hw, "llamacpp", find_variant=find, llamacpp_ok=True).model == str(q4)
    # the 16-bit VL base has no 16-bit GGUF twin here: vLLM
    assert choose_engine(res("tiny-vl"), hw, "auto", find_variant=find, llamacpp_ok=True).engine == "vllm"


def test_explicit_engine_wins(with_variants):
    find, q4, _ = with_variants
    c = choose_engine(res("tiny-text-awq"), AVX2, "vllm", find_variant=find, llamacpp_ok=True)
    assert c.engine == "vllm" and c.model is None
    c = choose_engine(res("tiny-text-awq"), AMX, "llamacpp", find_variant=find, llamacpp_ok=True)
    assert (c.engine, c.model) == ("llamacpp", str(q4))


def test_explicit_llamacpp_without_a_gguf_variant_is_a_one_line_error():
    with pytest.raises(UserError) as e:
        choose_engine(res("tiny-text-awq"), AVX2, "llamacpp", find_variant=none, llamacpp_ok=True)
    line = e.value.line()
    assert "no local GGUF variant (tiny-text-gguf)" in line and "--formats gguf" in line and "--engine vllm" in line


def test_unknown_engine_is_a_user_error():
    with pytest.raises(UserError, match="unknown engine 'tensorrt'"):
        choose_engine(res("tiny-text"), AVX2, "tensorrt", find_variant=none, llamacpp_ok=True)
    with pytest.raises(UserError) as e:  # "llama.cpp" is read as llamacpp
        choose_engine(res("tiny-text"), AVX2, "llama.cpp", find_variant=none, llamacpp_ok=True)
    assert "no local GGUF variant (tiny-text-gguf-bf16)" in e.value.line()


def test_gguf_variant_path_reads_the_artifact_root(tmp_path):
    assert gguf_variant_path("tiny-text", False, tmp_path) is None
    gguf_folder(tmp_path, "tiny-text-gguf")
    assert gguf_variant_path("tiny-text", False, tmp_path) == tmp_path / "tiny-text-gguf"
    assert gguf_variant_path("tiny-text-awq", False, tmp_path) == tmp_path / "tiny-text-gguf"  # same family
    assert gguf_variant_path("tiny-text", True, tmp_path) is None


def test_auto_on_this_machine_follows_the_rules(with_variants):
    """What `serve --engine auto` picks here, checked against this CPU's flags (not a tautology: the expected
    engine is derived from the flags independently of serve.engine's code path)."""
    find, q4, _ = with_variants
    hw = detect()
    c = choose_engine(res("tiny-text-awq"), hw, "auto", find_variant=find, llamacpp_ok=True)
    if hw.has_gpu or hw.flag("amx_tile"):
        assert c.engine == "vllm"
    else:
        assert (c.engine, c.model) == ("llamacpp", str(q4))
        assert ("no AVX-512" if not hw.flag("avx512f") else "no AMX") in c.reason
