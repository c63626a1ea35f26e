"""core/shapes.py: the published Qwen3-4B-Instruct-2507 / Qwen3-VL-8B-Instruct shapes, their parameter counts (meta
device, no memory) and the shard-by-shard random-checkpoint writer on scaled-down configs of the same structure."""
import json

import pytest
import torch

from core import catalog, shapes, tiny

# config.json of the published models, typed in again here (not imported)
PUBLISHED_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "rope_theta": 5000000,
                "rms_norm_eps": 1e-6, "max_position_embeddings": 262144, "tie_word_embeddings": True}
PUBLISHED_VL_TEXT = {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                     "rope_theta": 5000000, "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
                     "tie_word_embeddings": False}
PUBLISHED_VL_VISION = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
                       "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
                       "hidden_act": "gelu_pytorch_tanh", "in_channels": 3}

IDS = {"bos": 0, "eos": 2, "pad": 0, "vision_start": 3, "vision_end": 4, "image": 5, "video": 6}
SMALL_TEXT = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 4096}
SMALL_VL_TEXT = {**SMALL_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                   "mrope_section": [12, 10, 10], "mrope_interleaved": True}}
SMALL_VISION = {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2,
                "deepstack_visual_indexes": [1]}


def test_configs_are_the_published_numbers():
    assert shapes.QWEN3_4B_TEXT == PUBLISHED_4B
    assert shapes.QWEN3_VL_8B_TEXT == PUBLISHED_VL_TEXT
    assert shapes.QWEN3_VL_8B_VISION == PUBLISHED_VL_VISION
    assert shapes.QWEN3_VL_8B_MROPE == {"mrope_section": [24, 20, 20], "mrope_interleaved": True}
    t = shapes.text_config()
    for k, v in PUBLISHED_4B.items():
        got = t.rope_parameters["rope_theta"] if k == "rope_theta" else getattr(t, k)
        assert got == v, k
    assert t.architectures == ["Qwen3ForCausalLM"] and t.hidden_act == "silu" and t.attention_bias is False
    vl = shapes.vl_config()
    tc, vc = vl.text_config, vl.vision_config
    for k, v in PUBLISHED_VL_TEXT.items():
        got = {"rope_theta": tc.rope_parameters["rope_theta"], "tie_word_embeddings": vl.tie_word_embeddings}.get(
            k, getattr(tc, k, None))
        assert got == v, k
    assert tc.rope_parameters["mrope_section"] == [24, 20, 20] and tc.rope_parameters["mrope_interleaved"] is True
    for k, v in PUBLISHED_VL_VISION.items():
        assert list(getattr(vc, k)) == v if isinstance(v, list) else getattr(vc, k) == v, k
    assert vl.image_token_id == 151655 and vl.architectures == ["Qwen3VLForConditionalGeneration"]


def test_gpu_check_uses_the_same_shape():
    from bench import gpu_check

    assert gpu_check.QWEN3_VL_8B_TEXT is shapes.QWEN3_VL_8B_TEXT


def test_parameter_counts_on_the_meta_device():
    """4B: 4.02e9 (tied: no lm_head); VL-8B: 8.77e9, of which the vision tower 0.58e9. The analytic count from the
    config dict (used by serve --plan without torch) equals the meta-device count exactly."""
    for shape, cfg, total, vision in (("qwen3-4b-instruct-2507", shapes.text_config(), 4_022_468_096, 0),
                                      ("qwen3-vl-8b-instruct", shapes.vl_config(), 8_767_123_696, 576_388_336)):
        model = shapes.meta_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == total
        assert sum(p.numel() for n, p in model.named_parameters() if ".visual." in f".{n}") == vision
        counts = shapes.param_counts(shapes.config_dict(shape))
        assert counts["total"] == total and counts["vision"] == vision
    assert shapes.param_counts(shapes.config_dict("qwen3-4b-instruct-2507"))["lm_head"] == 0
    assert shapes.checkpoint_bytes(shapes.config_dict("qwen3-vl-8b-instruct")) == 2 * 8_767_123_696  # 17.5 GB
    specs = shapes.tensor_specs(shapes.meta_model(shapes.text_config()))
    assert not any(n.startswith("lm_head") for n, _, _ in specs)  # tied: the checkpoint has no lm_head tensor
    shards = shapes.plan_shards(specs)
    assert len(shards) == 5 and all(sum(2 * torch.Size(s[1]).numel() for s in sh) <= 2e9 for sh in shards)


def test_analytic_counts_match_meta_on_scaled_configs():
    for cfg in (shapes.text_config(SMALL_TEXT, IDS), shapes.vl_config(SMALL_VL_TEXT, SMALL_VISION, IDS)):
        model = shapes.meta_model(cfg)
        assert shapes.param_counts(cfg.to_dict())["total"] == sum(p.numel() for p in model.parameters())


def _load(folder, cls):
    model, info = cls.from_pretrained(folder, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _saved_names(model, tmp_path) -> dict:
    """Names and shapes transformers itself writes for this model class (the reference)."""
    from bench.roofline import read_header

    ref = tmp_path / "ref"
    model.save_pretrained(ref)
    out = {}
    for f in ref.glob("*.safetensors"):
        out.update({k: v["shape"] for k, v in read_header(f).items()})
    return out


def test_writer_text_tied_shards_load_and_run(tmp_path):
    from transformers import Qwen3ForCausalLM

    from bench.roofline import read_header

    cfg = shapes.text_config(SMALL_TEXT, IDS)
    res = shapes.write_checkpoint(cfg, tmp_path / "m", max_shard_bytes=400_000, zero_rows={
        "model.embed_tokens.weight": [0, 2]})
    files = sorted((tmp_path / "m").glob("*.safetensors"))
    assert len(files) == len(res["files"]) > 1
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    headers = {}
    for f in files:
        h = read_header(f)
        assert sum(v["data_offsets"][1] - v["data_offsets"][0] for v in h.values()) <= max(
            400_000, max(v["data_offsets"][1] - v["data_offsets"][0] for v in h.values()))
        headers.update({k: v["shape"] for k, v in h.items()})
    assert set(index["weight_map"]) == set(headers) and index["metadata"]["total_size"] == res["total_size"]
    torch.manual_seed(0)
    assert headers == _saved_names(Qwen3ForCausalLM(cfg).to(torch.bfloat16), tmp_path)
    assert "lm_head.weight" not in headers
    model = _load(tmp_path / "m", Qwen3ForCausalLM)
    emb = model.model.embed_tokens.weight.detach()
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied on load
    assert emb[0].abs().sum() == 0 and emb[2].abs().sum() == 0 and 0.015 < float(emb[10:].float().std()) < 0.025
    assert float(model.model.norm.weight.detach().float().min()) == 1.0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[7, 8, 9, 10]])).logits
    assert logits.shape == (1, 4, 512) and torch.isfinite(logits.float()).all()


def test_writer_vl_shards_load_and_run_with_an_image(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    cfg = shapes.vl_config(SMALL_VL_TEXT, SMALL_VISION, IDS)
    res = shapes.write_checkpoint(cfg, tmp_path / "m", max_shard_bytes=1_000_000, zero_rows={"lm_head.weight": [2]})
    assert len(res["files"]) > 1 and res["params"] == shapes.param_counts(cfg.to_dict())["total"]
    from bench.roofline import read_header

    headers = {}
    for f in (tmp_path / "m").glob("*.safetensors"):
        headers.update({k: v["shape"] for k, v in read_header(f).items()})
    torch.manual_seed(0)
    assert headers == _saved_names(Qwen3VLForConditionalGeneration(cfg).to(torch.bfloat16), tmp_path)
    assert any(k.startswith("model.visual.deepstack_merger_list.0.") for k in headers)
    model = _load(tmp_path / "m", Qwen3VLForConditionalGeneration)
    assert model.lm_head.weight.detach()[2].abs().sum() == 0
    # one 64x64 picture: 4x4 patches of 16 px -> 4 LM tokens after the 2x2 merge
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 2 * 16 * 16).to(torch.bfloat16)
    ids = torch.tensor([[IDS["vision_start"]] + [IDS["image"]] * 4 + [IDS["vision_end"], 20, 21]])
    types = (ids == IDS["image"]).long()  # 1: image token (what the processor returns as mm_token_type_ids)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types)
    assert out.logits.shape == (1, 8, 512) and torch.isfinite(out.logits.float()).all()


def test_catalog_and_builders_know_the_shape_families():
    for alias, arch in (("shape-text", catalog.TEXT_ARCH), ("shape-vl", catalog.VL_ARCH)):
        fam = catalog.variant(alias).family
        assert fam.local_only and fam.base_hub_id is None and fam.architecture == arch and fam.max_model_len == 4096
        assert alias in tiny.BUILDERS and shapes.FAMILY_SHAPES[fam.name]
        assert catalog.quantized_alias(alias, "gptq") == f"{alias}-gptq"


def test_builder_refuses_without_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from core.errors import UserError

    du = namedtuple("du", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: du(10**12, 10**12 - 10**9, 10**9))
    tok = tiny.build_tokenizer(tiny.corpus(max_chars=20_000))
    with pytest.raises(UserError, match="needs 17.5 GB of disk"):
        tiny.BUILDERS["shape-vl"](tmp_path, tok, [])
    assert not list(tmp_path.iterdir())


def test_builder_end_to_end_on_a_scaled_vl_config(tmp_path, monkeypatch):
    """tiny.build('shape-vl') with the published config swapped for a scaled copy: an atomic folder with config,
    shards, this tokenizer and processor, loadable by transformers (the real build only differs in size)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    real_vl = shapes.vl_config
    monkeypatch.setattr(shapes, "vl_config", lambda ids=None: real_vl(SMALL_VL_TEXT, SMALL_VISION, ids))
    monkeypatch.setattr(shapes, "checkpoint_bytes", lambda cfg: 10**6)
    out = tiny.build("shape-vl", tmp_path / "shape-vl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shape-vl"]  # no temp folder left
    meta = json.loads((out / "tiny_model.json").read_text())
    assert meta["alias"] == "shape-vl" and meta["shape"] == "qwen3-vl-8b-instruct"
    model = _load(out, Qwen3VLForConditionalGeneration)
    proc = AutoProcessor.from_pretrained(out)
    eos = proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.config.text_config.eos_token_id == eos and model.lm_head.weight.detach()[eos].abs().sum() == 0
    assert model.config.image_token_id == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_builder_end_to_end_on_a_scaled_tied_text_config(tmp_path, monkeypatch):
    from transformers import Qwen3ForCausalLM

    real = shapes.text_config
    monkeypatch.setattr(shapes, "text_config", lambda ids=None: real(SMALL_TEXT, ids))
    monkeypatch.setattr(shapes, "checkpoint_bytes", lambda cfg: 10**6)
    out = tiny.build("shape-text", tmp_path / "shape-text")
    model = _load(out, Qwen3ForCausalLM)
    eos = json.loads((out / "config.json").read_text())["eos_token_id"]
    assert model.config.tie_word_embeddings and model.lm_head.weight.detach()[eos].abs().sum() == 0
