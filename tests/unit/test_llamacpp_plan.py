"""serve/engines/llamacpp.py's pure parts: llama.cpp's server command, its slots and context per slot from the plan,
and which files of a GGUF folder it serves."""
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
    text = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 2048}
    cfg = {"architectures": ["Qwen3VLForConditionalGeneration" if vl else "Qwen3ForCausalLM"], **text}
    if vl:
        cfg.update(text_config=text, vision_config={"depth": 2, "hidden_size": 128, "intermediate_size": 256,
                                                    "num_heads": 2, "patch_size": 16, "spatial_merge_size": 2,
                                                    "out_hidden_size": 256, "in_channels": 3,
                                                    "temporal_patch_size": 2})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    if mmproj:
        (d / "mmproj-model-F16.gguf").write_bytes(b"GGUF")
    return d


def test_command_runs_llamacpps_server_with_slots_and_the_projector_for_vl():
    argv, env = llamacpp_command(Path("/m/x.gguf"), served_name="x", host="127.0.0.1", port=9, ctx_per_slot=2048,
                                 slots=4, n_threads=2, api_key="k", mmproj=Path("/m/mmproj-x.gguf"),
                                 image_max_tokens=64)
    assert argv[1:3] == ["-m", "serve.engines.llamacpp_server"]
    assert argv[argv.index("--parallel") + 1] == "4" and argv[argv.index("--ctx-per-slot") + 1] == "2048"
    assert argv[argv.index("--mmproj") + 1] == "/m/mmproj-x.gguf"
    assert argv[argv.index("--image-max-tokens") + 1] == "64"
    assert env["LLAMA_API_KEY"] == "k" and "k" not in argv
    text, _ = llamacpp_command(Path("/m/x.gguf"), served_name="x", host="127.0.0.1", port=9, ctx_per_slot=2048,
                               slots=1, n_threads=1, image_max_tokens=64)
    assert "--mmproj" not in text and "--image-max-tokens" not in text  # a text model has no pictures to cap


def test_the_runner_maps_flags_onto_llamacpps_params(monkeypatch):
    """The child's CommonParams: total context = slots x context per slot with per-slot KV (what the plan counts),
    no host-RAM prompt cache, no self-fitting, the key from the environment only."""
    pytest.importorskip("xllamacpp")
    from serve.engines import llamacpp_server as runner

    monkeypatch.setenv("LLAMA_API_KEY", "secret")
    p = runner.params(runner.parse(["--model", "/m/x.gguf", "--alias", "x", "--port", "9", "--parallel", "4",
                                    "--ctx-per-slot", "1024", "--threads", "2", "--mmproj", "/m/p.gguf",
                                    "--image-max-tokens", "64"]))
    assert (p.n_parallel, p.n_ctx, p.kv_unified, p.cont_batching) == (4, 4096, False, True)
    assert (p.cpuparams.n_threads, p.cpuparams_batch.n_threads, p.image_max_tokens) == (2, 2, 64)
    assert p.model.path == "/m/x.gguf" and p.mmproj.path == "/m/p.gguf" and p.model_alias == {"x"}
    assert p.cache_ram_mib == 0 and p.fit_params is False and p.api_keys == ["secret"] and p.endpoint_metrics


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


def test_a_vl_plan_caps_image_tokens_at_the_processors_budget(tmp_path):
    """The server caps pictures itself (image_max_tokens) at the processor's budget, so a plain client's large
    picture costs the same tokens as on vLLM (a 448 x 448 picture would otherwise become 196 image tokens, not 64)."""
    from core.hardware import Hardware
    from serve.engines import llamacpp

    hw = Hardware("EPYC", 2, ("avx2",), 23.5, 20.0, ())
    d = _folder(tmp_path, vl=True, mmproj=True)
    (d / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 1024,
                                                                     "longest_edge": 65536}}))
    lp = llamacpp.plan(str(d), ServeOptions(), hw)
    assert lp.argv[lp.argv.index("--image-max-tokens") + 1] == "64" and lp.client_max_pixels is None
    assert any(n.startswith("images: at most 64 tokens per picture") for n in lp.notes)
    (d / "preprocessor_config.json").unlink()
    assert "--image-max-tokens" not in llamacpp.plan(str(d), ServeOptions(), hw).argv  # no processor config: none


def test_slots_default_to_four_and_contexts_shrink_to_what_fits(tmp_path):
    """--parallel N slots each with --max-model-len tokens; where N x KV does not fit in free RAM the context per
    slot is what serve --plan says fits, and where nothing fits the start is refused in one line."""
    from core.hardware import Hardware
    from serve.engines import llamacpp

    d = tmp_path / "tiny-text-gguf"
    d.mkdir()
    cfg = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
           "vocab_size": 4096, "max_position_embeddings": 1_000_000}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    roomy = Hardware("EPYC", 2, ("avx2",), 23.5, 20.0, ())
    lp = llamacpp.plan(str(d), ServeOptions(max_model_len=4096), roomy)
    assert lp.argv[lp.argv.index("--parallel") + 1] == "4" and lp.argv[lp.argv.index("--ctx-per-slot") + 1] == "4096"
    lp = llamacpp.plan(str(d), ServeOptions(max_model_len=4096, parallel=2), roomy)
    assert lp.argv[lp.argv.index("--parallel") + 1] == "2"
    kv_per_token = 2 * 2 * 64 * 2 * 2  # layers x kv heads x head_dim x (K, V) x bf16
    tight = Hardware("EPYC", 2, ("avx2",), 1.0, (0.2e9 + 4 * 3000 * kv_per_token + 60e6) / 2**30, ())
    lp = llamacpp.plan(str(d), ServeOptions(max_model_len=1_000_000), tight)
    ctx = int(lp.argv[lp.argv.index("--ctx-per-slot") + 1])
    assert 512 <= ctx < 1_000_000 and any("does not fit in free RAM" in n for n in lp.notes)
    with pytest.raises(UserError) as e:
        llamacpp.plan(str(d), ServeOptions(), Hardware("EPYC", 2, ("avx2",), 1.0, 0.1, ()))
    assert "does not fit in free RAM with 4 llama.cpp slots" in e.value.line() and "--parallel" in e.value.line()
    with pytest.raises(UserError):
        llamacpp.plan(str(d), ServeOptions(parallel=0), roomy)
