"""Tiny local models: built offline, loadable by transformers and by a real vLLM server."""
import json

import pytest
import torch
from PIL import Image

from core import catalog, tiny


@pytest.fixture(scope="module")
def tiny_vl():
    return catalog.resolve("tiny-vl").path


@pytest.fixture(scope="module")
def tiny_text():
    return catalog.resolve("tiny-text").path


def _linear_shapes_ok(model):
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ("language_model" in name or name.startswith("model.layers")):
            assert mod.in_features % 128 == 0 and mod.out_features % 128 == 0, name


def test_tiny_vl_loads_in_transformers_and_sees_images(tiny_vl):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    files = {p.name for p in tiny_vl.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "processor_config.json", "generation_config.json"} <= files
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert model.dtype == torch.bfloat16
    _linear_shapes_ok(model)
    proc = AutoProcessor.from_pretrained(tiny_vl)
    assert type(proc).__name__ == "Qwen3VLProcessor"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>What is this?" in text
    assert text.endswith("<|im_start|>assistant\n")
    inputs = proc(text=[text], images=[Image.new("RGB", (64, 48), "red")], return_tensors="pt")
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_img == (64 // 32) * (48 // 32) or n_img > 0
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 8  # special tokens silenced: never stops early


def test_tiny_text_is_trained_and_chats(tiny_text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.loads((tiny_text / "tiny_model.json").read_text())
    assert meta["training"]["final_loss"] < meta["training"]["first_loss"] - 1.0
    model = AutoModelForCausalLM.from_pretrained(tiny_text)
    tok = AutoTokenizer.from_pretrained(tiny_text)
    _linear_shapes_ok(model)
    ids = tok.apply_chat_template([{"role": "user", "content": "Explain: Return the absolute value."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip(), "a trained tiny model answers with text"


def test_tokenizer_has_qwen_special_tokens(tiny_vl):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vl)
    cfg = json.loads((tiny_vl / "config.json").read_text())
    assert tok.convert_tokens_to_ids("<|image_pad|>") == cfg["image_token_id"]
    for t in tiny.SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert len(tok) <= cfg["text_config"]["vocab_size"]


def test_build_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    p = tiny.ensure("tiny-vl", catalog.artifact_root())
    assert p == tmp_path / "artifacts" / "tiny-vl" and (p / "config.json").is_file()
    mtime = (p / "config.json").stat().st_mtime
    assert tiny.ensure("tiny-vl", catalog.artifact_root()) == p and (p / "config.json").stat().st_mtime == mtime
    assert not [x for x in p.parent.iterdir() if x.name.startswith(".tiny-vl.") and x.is_dir()]


def test_tiny_vl_serves_in_vllm(server):
    """A real vLLM CPU server loads the tiny VL model and answers an image chat."""
    from serve.client import chat, image_part, user_message

    srv = server("tiny-vl")
    text, stats = chat(srv.base_url, srv.model,
                       [user_message("Describe the picture.", [image_part(Image.new("RGB", (96, 64), "blue"))])],
                       api_key=srv.api_key, max_tokens=16)
    assert text.strip() and stats.output_tokens == 16 and stats.prompt_tokens > 16
