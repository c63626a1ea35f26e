"""Catalog data and alias resolution (no model is built here except where noted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import catalog
from core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    return tmp_path


def test_published_variants_are_data():
    assert catalog.variant("text-fp16").hub_id == "Qwen/Qwen3-4B-Instruct-2507"
    assert catalog.variant("vl-fp16").hub_id == "Qwen/Qwen3-VL-8B-Instruct"
    assert catalog.variant("vl-gptq").hub_id == "Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound-GPTQ"
    assert catalog.variant("vl-awq").hub_id == "Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound-AWQ"
    assert catalog.variant("vl-autoround").hub_id == "Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound"
    assert catalog.variant("text-autoround").hub_id == "Vishva007/Qwen3-4B-Instruct-2507-W4A16-AutoRound"
    assert catalog.variant("text-awq").hub_id == "Vishva007/Qwen3-4B-Instruct-2507-W4A16-AutoRound-AWQ"
    for a in ("vl-gptq", "vl-awq", "vl-autoround"):
        v = catalog.variant(a)
        assert v.modality == "vl" and v.is_quantized and v.base.alias == "vl-fp16"
    assert catalog.variant("text-awq").format.quant_method == "awq"
    assert catalog.variant("vl-gptq").format.autoround_format == "auto_gptq"
    assert not catalog.variant("vl-fp16").is_quantized


def test_tiny_variants_exist_for_every_format():
    for fam in ("tiny-text", "tiny-vl", "bench-text"):
        for fmt in catalog.QUANT_FORMATS:
            alias = catalog.quantized_alias(fam, fmt)
            v = catalog.variant(alias)
            assert v.hub_id is None and v.family.local_only and v.format.name == fmt
    assert catalog.quantized_alias("vl-fp16", "gptq") == "vl-gptq"


def test_unknown_alias_is_a_user_error():
    with pytest.raises(UserError) as e:
        catalog.resolve("vl-gtpq")
    assert "unknown model alias 'vl-gtpq'" in e.value.line() and "--list" in e.value.line()


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        catalog.resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        catalog.resolve(str(tmp_path / "empty"))


def test_alias_prefers_local_artifact_then_hub(home):
    r = catalog.resolve("vl-gptq")
    assert (r.source, r.location) == ("hub", "Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound-GPTQ")
    art = home / "artifacts" / "vl-gptq"
    art.mkdir(parents=True)
    (art / "config.json").write_text(json.dumps({"architectures": ["Qwen3VLForConditionalGeneration"]}))
    r = catalog.resolve("vl-gptq")
    assert r.source == "local" and r.path == art and r.served_name == "vl-gptq"
    # the same folder named by path resolves to the same variant
    assert catalog.resolve(str(art)).variant.alias == "vl-gptq"


def test_unpublished_quantized_variant_says_how_to_make_it(home):
    with pytest.raises(UserError) as e:
        catalog.resolve("tiny-vl-gptq")
    assert "python -m quantize --model tiny-vl --formats gptq" in e.value.line()


def test_hub_id_passes_through(home):
    r = catalog.resolve("someorg/some-model")
    assert r.source == "hub" and r.location == "someorg/some-model" and r.variant is None


def test_artifact_root_from_env(home):
    assert catalog.artifact_root() == home / "artifacts"


def test_list_prints_every_alias_and_what_is_local(home):
    r = subprocess.run([sys.executable, "-m", "serve", "--list"], check=False, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for alias in catalog.VARIANTS:
        assert alias in r.stdout
    assert str(home / "artifacts") in r.stdout


def test_family_of_a_folder_outside_the_catalog(tmp_path):
    """A model folder passed as a path belongs to the family of the base its quantization_report.json names."""
    def folder(name, base_id):
        d = tmp_path / name
        d.mkdir()
        if base_id is not None:
            (d / "quantization_report.json").write_text(json.dumps({"base": {"id": base_id}}))
        return str(d)

    vl = next(f for f in catalog.FAMILIES.values() if f.base_hub_id and "VL" in f.base_hub_id)
    assert catalog.family_of(None, folder("a", "tiny-vl")).base_alias == "tiny-vl"
    assert catalog.family_of(None, folder("b", vl.base_hub_id)) is vl
    assert catalog.family_of(None, folder("c", "someone/Other-Model")) is None
    assert catalog.family_of(None, folder("d", None)) is None
    assert catalog.family_of(catalog.variant("tiny-text-gptq")).base_alias == "tiny-text"
