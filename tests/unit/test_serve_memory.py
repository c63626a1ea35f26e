"""serve refuses, in one line and before starting vLLM, a model whose planned RAM exceeds what is available on a
CPU (the 8B bf16 on a 24 GB machine would otherwise be OOM-killed minutes into loading); --force starts it."""
from __future__ import annotations

import dataclasses

import pytest

from core import shapes
from core.errors import UserError
from core.hardware import Hardware
from serve.args import ServeOptions
from serve.engines import vllm

AVX512 = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw")
SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 4096}
IDS = {"bos": 0, "eos": 2, "pad": 0, "vision_start": 3, "vision_end": 4, "image": 5, "video": 6}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    out = tmp_path / "m"
    shapes.write_checkpoint(shapes.text_config(SMALL, IDS), out)
    return out


def test_too_big_for_the_ram_is_refused_in_one_line(folder):
    hw = Hardware("Xeon", 2, AVX512, 4.0, 2.5, ())  # vLLM's own ~2.3 GB + 1 GiB of KV do not fit in 2.5 GiB
    lp = vllm.plan(str(folder), ServeOptions(max_model_len=2048), hw)
    with pytest.raises(UserError) as e:
        vllm.check_memory(lp)
    line = e.value.line()
    assert "\n" not in line and "GB of RAM on vLLM" in line and "is available" in line and "--force" in line
    vllm.check_memory(dataclasses.replace(lp, opts=dataclasses.replace(lp.opts, force=True)))  # forced: no refusal


def test_what_fits_starts(folder):
    hw = Hardware("Xeon", 2, AVX512, 23.5, 20.0, ())
    vllm.check_memory(vllm.plan(str(folder), ServeOptions(max_model_len=2048), hw))
