"""core.artifact: the one reader of artifact folders (config.json, safetensors headers, GGUF files, inspect) and
atomic_folder; core.formats: every spelling of a format."""
from __future__ import annotations

import json
import struct

import pytest

from core import artifact, catalog
from core.errors import UserError


def _safetensors(path, tensors: dict[str, tuple[list[int], str]], cut: int = 0) -> None:
    """A real-layout safetensors file with zero data (2 bytes per element)."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, (shape, dtype) in tensors.items():
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * off
    path.write_bytes(data[:len(data) - cut])


def test_tensors_and_problems_from_headers(tmp_path):
    _safetensors(tmp_path / "model.safetensors", {"a.weight": ([4, 8], "BF16"), "b.qweight": ([2, 4], "I32")})
    assert artifact.tensors(tmp_path) == {"a.weight": ((4, 8), "BF16"), "b.qweight": ((2, 4), "I32")}
    assert artifact.safetensors_problem(tmp_path / "model.safetensors") is None
    _safetensors(tmp_path / "model.safetensors", {"a.weight": ([4, 8], "BF16")}, cut=10)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert artifact.safetensors_problem(tmp_path / "model.safetensors") == f"truncated ({size} of {size + 10} bytes)"
    with pytest.raises(UserError, match="is truncated"):
        artifact.tensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x05")
    assert artifact.safetensors_problem(tmp_path / "model.safetensors") == "truncated (1 bytes)"
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{no}")
    assert artifact.safetensors_problem(tmp_path / "model.safetensors") == "corrupt (its header is not valid JSON)"


def test_read_config_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        artifact.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(UserError, match="is not valid JSON"):
        artifact.read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(UserError, match="is not a JSON object"):
        artifact.read_config(tmp_path)


def test_inspect_gptq_folder_gguf_folder_and_not_a_model(tmp_path):
    q = tmp_path / "m-gptq"
    q.mkdir()
    (q / "config.json").write_text(json.dumps({
        "architectures": [catalog.TEXT_ARCH],
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}}))
    _safetensors(q / "model.safetensors", {"a.qweight": ([2, 4], "I32")})
    (q / artifact.REPORT_FILE).write_text(json.dumps({"max_model_len": 2048}))
    a = artifact.inspect(q)
    assert (a.format, a.modality, a.architecture, a.quant_method, a.bits, a.group_size, a.sym) == \
        ("gptq", "text", catalog.TEXT_ARCH, "gptq", 4, 128, True)
    assert a.weight_bytes == (q / "model.safetensors").stat().st_size and a.max_model_len == 2048
    assert "config.json" in a.files and a.gguf is None

    g = tmp_path / "m-gguf"
    g.mkdir()
    (g / "m-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (g / "mmproj-m-F16.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    a = artifact.inspect(g)
    assert (a.format, a.modality, a.gguf.name, a.mmproj.name, a.weight_bytes, a.config) == \
        ("gguf", "vl", "m-Q4_K_M.gguf", "mmproj-m-F16.gguf", 80, {})
    assert artifact.is_gguf(g) and artifact.gguf_file(g / "mmproj-m-F16.gguf") is None
    bare = artifact.inspect(g / "m-Q4_K_M.gguf")
    assert bare.format == "gguf" and bare.config is None and bare.mmproj == g / "mmproj-m-F16.gguf"

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        artifact.inspect(tmp_path / "empty")


def test_atomic_folder_places_only_a_finished_folder(tmp_path):
    dest = tmp_path / "out"
    with artifact.atomic_folder(dest) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not dest.exists()
    assert (dest / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), artifact.atomic_folder(dest) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("half-written")
    assert (dest / "a.txt").read_text() == "1"  # the old one stays
    with pytest.raises(FileExistsError), artifact.atomic_folder(dest, replace=False) as tmp:
        (tmp / "a.txt").write_text("3")
    with artifact.atomic_folder(dest) as tmp:
        (tmp / "b.txt").write_text("4")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left


def test_format_registry_knows_every_spelling():
    assert [catalog.format_named(s) for s in ("auto_round", "AUTO-GPTQ", "ct", "llm_compressor", "gguf", "exl2")] == \
        ["autoround", "gptq", "compressed-tensors", "compressed-tensors", "gguf", None]
    assert [catalog.format_of_quant_method(m) for m in ("auto-round", "intel/auto-round", "gptq_marlin", "awq",
                                                        "compressed-tensors", None, "fp8")] == \
        ["autoround", "autoround", "gptq", "awq", "compressed-tensors", "bf16", "fp8"]
