"""serve/llamacpp.py's pure parts: the llama.cpp server command, and which files of a GGUF folder it serves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from serve.args import ServeOptions
from serve.engines.llamacpp import llamacpp_command, resolve_gguf


def _folder(tmp_path: Path, vl: bool, mmproj: bool) -> Path:
    d = tmp_path / ("tiny-vl-gguf" if vl else "tiny-text-gguf")
    d.mkdir()
    cfg = {"architectures": ["Qwen3VLForConditionalGeneration" if vl else "Qwen3ForCausalLM"]}
    if vl:
        cfg["vision_config"] = {"depth": 2}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    if mmproj:
        (d / "mmproj-model-F16.gguf").write_bytes(b"GGUF")
    return d


def test_command_queues_requests_and_adds_the_projector_for_vl():
    argv, env = llamacpp_command(Path("/m/x.gguf"), served_name="x", host="127.0.0.1", port=9, n_ctx=2048,
                                 n_threads=1, api_key="k", mmproj=Path("/m/mmproj-x.gguf"))
    assert argv[argv.index("--interrupt_requests") + 1] == "False"  # a new request must not cut a streaming one
    assert argv[argv.index("--chat_format") + 1] == "mtmd"
    assert argv[argv.index("--clip_model_path") + 1] == "/m/mmproj-x.gguf"
    assert env["API_KEY"] == "k" and "k" not in argv
    text, _ = llamacpp_command(Path("/m/x.gguf"), served_name="x", host="127.0.0.1", port=9, n_ctx=2048, n_threads=1)
    assert "--clip_model_path" not in text and "--chat_format" not in text


def test_a_vl_folder_serves_with_its_projector_and_refuses_without(tmp_path):
    d = _folder(tmp_path, vl=True, mmproj=True)
    gm = resolve_gguf(str(d))
    assert gm.file.name == "model-Q4_K_M.gguf" and gm.mmproj.name == "mmproj-model-F16.gguf"
    with pytest.raises(UserError) as e:
        resolve_gguf(str(d / "mmproj-model-F16.gguf"))
    assert "vision projector, not a language model" in e.value.line()
    (d / "mmproj-model-F16.gguf").unlink()
    with pytest.raises(UserError) as e:
        resolve_gguf(str(d))
    assert "without its vision projector" in e.value.line() and "--formats gguf" in e.value.line()


def test_a_text_folder_has_no_projector(tmp_path):
    gm = resolve_gguf(str(_folder(tmp_path, vl=False, mmproj=False)))
    assert gm.mmproj is None and gm.served_name == "tiny-text-gguf"


def test_a_vl_plan_hands_clients_the_processors_image_budget(tmp_path):
    """llama.cpp's server has no image budget: the plan carries the processor's, which the demo applies and serve
    prints (a 448 x 448 picture would otherwise become 196 image tokens where vLLM makes 64)."""
    from core.hardware import Hardware
    from serve.engines import llamacpp

    hw = Hardware("EPYC", 2, ("avx2",), 23.5, 20.0, ())
    d = _folder(tmp_path, vl=True, mmproj=True)
    (d / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 1024,
                                                                     "longest_edge": 65536}}))
    lp = llamacpp.plan(str(d), ServeOptions(), hw)
    assert lp.client_max_pixels == 65536
    assert any(n.startswith("images: llama.cpp's server has no image budget") and "--max-image-pixels 65536" in n
               for n in lp.notes)
    (d / "preprocessor_config.json").unlink()
    assert llamacpp.plan(str(d), ServeOptions(), hw).client_max_pixels is None  # no processor config: nothing said
    (tmp_path / "t").mkdir()
    t = _folder(tmp_path / "t", vl=False, mmproj=False)
    assert llamacpp.plan(str(t), ServeOptions(), hw).client_max_pixels is None
