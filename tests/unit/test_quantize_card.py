"""Model card rendering and the calibration helpers (no model needed)."""
import json

import pytest

from core.errors import UserError
from quantize import calibration, card


def report(fmt="gptq", verify=True):
    r = {
        "alias": "tiny-vl-gptq", "format": fmt, "quant_method": "gptq",
        "base": {"id": "tiny-vl", "source": "local", "location": "/x/tiny-vl", "architecture": "Qwen3VLForConditionalGeneration"},
        "recipe": {"name": "light", "iters": 20, "nsamples": 16, "seqlen": 256, "batch_size": 4, "lr": 0.005},
        "device": "cpu",
        "calibration": {"source": "local corpus", "sha256": "ab" * 32, "samples": 16, "tokens_per_sample": 256},
        "layout": {"modality": "vl", "totals": {"linears_4bit": 14},
                   "groups": [{"kind": "linear4", "group": "model.language_model.layers.*.mlp.down_proj", "count": 2,
                               "params": 262144, "bytes_bf16": 524288, "bytes_w4a16": 139264},
                              {"kind": "16bit", "group": "model.visual.merger.* (vision merger)", "count": 6,
                               "params": 394240, "bytes_bf16": 788480, "bytes_w4a16": 788480}]},
        "sizes": {"artifact_bytes": 7_930_336, "base_bytes": 9_700_000, "ratio": 0.818},
        "lint": [{"level": "warning", "rule": "shapes", "message": "not Marlin-tileable"}],
        "verify": {"prompts": 4, "positions": 48, "with_image": True,
                   "results": {"rtn": {"name": "rtn (plain, untuned)", "loader": "base + RTN", "kl_mean": 0.0123,
                                       "kl_max": 0.05, "top1": 0.9, "error": None},
                               "gptq": {"name": "gptq", "loader": "transformers + AutoRoundConfig", "kl_mean": 0.0061,
                                        "kl_max": 0.02, "top1": 0.95, "error": None}},
                   "cross_format_kl": {"autoround~gptq": 1e-9}} if verify else None,
        "versions": {"auto-round": "0.16.1", "transformers": "5.19.0", "torch": "2.13.0"},
        "timings": {"tune_and_export_s": 12.3}, "path": "/x/artifacts/tiny-vl-gptq", "hub_id": None,
        "max_model_len": 2048, "command": "python -m quantize --model tiny-vl --formats gptq --recipe light",
    }
    return r


def test_card_front_matter_is_hub_style():
    text = card.render(report())
    fm = card.front_matter(text)
    assert fm["base_model"] == "tiny-vl" and fm["base_model_relation"] == "quantized"
    assert fm["pipeline_tag"] == "image-text-to-text" and "w4a16" in fm["tags"]
    q = fm["quantization"]
    assert q["bits"] == 4 and q["group_size"] == 128 and q["sym"] is True and q["recipe"] == "light"
    assert q["calibration_sha256"] == "ab" * 32
    assert fm["libraries"]["auto-round"] == "0.16.1" and fm["libraries"]["transformers"] == "5.19.0"


def test_card_body_has_layout_quality_and_serving():
    text = card.render(report())
    assert "| 4-bit | `model.language_model.layers.*.mlp.down_proj` | 2 |" in text
    assert "vision merger" in text and "16-bit" in text
    assert "| rtn (plain, untuned) | 0.01230 |" in text and "| gptq (this artifact) | 0.00610 |" in text
    assert "95.0%" in text and "with an image" in text
    assert "python -m serve --model tiny-vl-gptq" in text
    assert "vllm serve /x/artifacts/tiny-vl-gptq" in text and "--limit-mm-per-prompt" in text
    assert "7.56 MiB" in text and "warnings: not Marlin-tileable" in text


def test_card_without_verify_says_so():
    text = card.render(report(verify=False))
    assert "Not verified" in text


def test_calibration_files(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    assert calibration.read_file(tmp_path / "a.txt") == (["first paragraph", "second paragraph"], 0)
    recs = [{"text": "hello"}, {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
                                             {"role": "assistant", "content": "a cat"}]},
            {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nDescribe"}, {"from": "gpt", "value": "red"}]}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    texts, images = calibration.read_file(tmp_path / "b.jsonl")
    assert texts == ["hello", "what?\na cat", "Describe\nred"] and images == 2
    (tmp_path / "c.json").write_text(json.dumps(["one", "two"]))
    assert calibration.read_file(tmp_path / "c.json")[0] == ["one", "two"]


@pytest.mark.parametrize("name,content,match", [
    ("missing.txt", None, "not found"),
    ("bad.jsonl", '{"text": "a"}\n{not json', "not valid JSON"),
    ("empty.json", "[]", "holds no text"),
    ("data.csv", "a,b", "unsupported calibration file type"),
    ("bin.txt", b"\xff\xfe\x00bad", "cannot read"),
])
def test_calibration_bad_files(tmp_path, name, content, match):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(UserError, match=match):
        calibration.read_file(p)


def test_sha256_is_of_the_exact_samples():
    a = calibration.sha256_texts(["ab", "c"])
    assert a != calibration.sha256_texts(["a", "bc"]) and a == calibration.sha256_texts(["ab", "c"])


def _split(n, kl, top1):
    return {"positions": n, "kl_mean": kl, "kl_p95": 2 * kl, "kl_max": 3 * kl, "top1": top1, "ppl": 3.5,
            "ref_bounded": 0}


SERVED = {"k": 20, "new_tokens": 24, "tail_rule": "tail mass lumped", "base": {"server": "vLLM"},
          "results": {"gptq": {"server": "vLLM w4a8", "summary": {"text": _split(40, 0.0123, 0.975),
                                                                   "image": _split(20, 0.0456, 0.95), "all": None},
                               "errors": {}, "notes": []},
                      "awq": {"error": "the server did not start (out of memory)"}}}


def test_card_served_quality_section():
    text = card.render({**report(), "served": SERVED})
    sec = text[text.index("## Served quality (`--verify-served`)"):]
    assert "top-20" in sec and "vLLM" in sec
    assert "| gptq (this artifact) | vLLM w4a8 | text | 40 | 0.01230 | 0.02460 | 97.5% | 3.50 |" in sec
    assert "| gptq (this artifact) | vLLM w4a8 | image | 20 | 0.04560 | 0.09120 | 95.0% | 3.50 |" in sec
    assert "| awq | failed |" in sec and "out of memory" in sec


def test_card_served_quality_absent_or_failed():
    assert "Served quality" not in card.render(report())
    text = card.render({**report(), "served": {"error": "the 16-bit base could not be served: no vLLM"}})
    assert "Not measured: the 16-bit base could not be served: no vLLM." in text
