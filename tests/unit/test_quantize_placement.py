"""One `quantize` run with safetensors formats and gguf places nothing unless every format passed (quantize/api.py):
GGUF is checked with the others before any tuning and built in the same staging folder after them."""
from __future__ import annotations

import json
import shutil

import pytest

from core import catalog, tiny
from core.errors import UserError
from quantize.api import quantize
from quantize.gguf import QWEN2_SPLIT

pytest.importorskip("auto_round", reason="AutoRound not installed (extra `quantize`)")
pytest.importorskip("gguf", reason="gguf-py not installed (`make gguf-py`)")


def _tiny_text_copy(tmp_path, name: str):
    src = tiny.ensure("tiny-text", catalog.artifact_root())
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _left(out) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_gguf_destination_taken_refuses_before_any_tuning(tmp_path, capfd):
    """Only the gguf alias is occupied: the whole run stops before tuning (it used to export and place gptq
    first, then fail on the GGUF half)."""
    base = _tiny_text_copy(tmp_path, "odd-text")
    out = tmp_path / "out"
    (out / "odd-text-gguf-bf16").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        quantize(str(base), "gptq,gguf", "rtn", gguf_type="bf16", output=str(out))
    assert "output exists" in e.value.line() and "odd-text-gguf-bf16" in e.value.line()
    assert _left(out) == ["odd-text-gguf-bf16"]  # no odd-text-gptq, no staging folder
    assert "[quantize] recipe rtn" not in capfd.readouterr().err  # stopped before calibration and tuning


@pytest.mark.e2e  # real quantization (RTN on tiny-text, ~30 s)
def test_gguf_failing_after_safetensors_passed_places_nothing(tmp_path, capfd):
    """A real input the GGUF half rejects and the safetensors half accepts: a tokenizer whose pre-tokenizer is not
    one llama.cpp's converter knows (digits in runs of 1-3, like Llama 3, instead of Qwen2's single digits). GPTQ is
    exported, linted and verified; then the converter refuses the tokenizer, and neither artifact is placed."""
    base = _tiny_text_copy(tmp_path, "odd-text")
    tj = json.loads((base / "tokenizer.json").read_text())
    text = json.dumps(tj)
    assert json.dumps(QWEN2_SPLIT)[1:-1] in text
    digits = json.dumps(r"|\p{N}|")[1:-1]
    assert text.count(digits) == 1
    (base / "tokenizer.json").write_text(text.replace(digits, json.dumps(r"|\p{N}{1,3}|")[1:-1]))
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        quantize(str(base), "gptq,gguf", "rtn", gguf_type="bf16", output=str(out))
    err = capfd.readouterr().err
    assert "does not know this model's tokenizer" in e.value.line(), e.value.line()
    assert "lint odd-text-gptq: ok" in err and "verify:" in err, err[-3000:]  # the gptq half passed first
    assert _left(out) == [], "nothing placed, no staging folder left"


@pytest.mark.e2e  # real quantization (RTN on tiny-text) and llama.cpp's verify
def test_safetensors_and_gguf_formats_are_placed_together(tmp_path):
    pytest.importorskip("xllamacpp", reason="xllamacpp not installed (extra `llamacpp`)")
    base = _tiny_text_copy(tmp_path, "odd-text")
    out = tmp_path / "out"
    got = quantize(str(base), "gptq,gguf", "rtn", gguf_type="bf16", output=str(out))
    assert list(got) == ["gptq", "gguf"]
    assert got == {"gptq": out / "odd-text-gptq", "gguf": out / "odd-text-gguf-bf16"}
    assert _left(out) == ["odd-text-gguf-bf16", "odd-text-gptq"]  # the staging folder is gone
    for fmt, folder in got.items():
        report = json.loads((folder / "quantization_report.json").read_text())
        assert report["format"] == fmt and report["path"] == str(folder) and report["verify"]["ok"]
        assert "--formats gptq,gguf" in report["command"] and "--gguf-type bf16" in report["command"]
    assert (out / "odd-text-gguf-bf16" / "odd-text-BF16.gguf").is_file()
