"""The format registry: a format registered with one line (tests/unit/fake_format.py) is found by every lookup and
checked by lint, served by serve's arguments and sized by `--plan`, with nothing else changed."""
from __future__ import annotations

import json
import struct

import pytest

from core import catalog, formats
from core.errors import UserError
from core.hardware import Hardware
from quantize import lint
from quantize.options import parse_formats
from serve import fit
from serve.args import ServeOptions, cpu_int4, cpu_int4_line, info_from_config, vllm_command

TEXT = "Qwen3ForCausalLM"
LAYER = "model.layers.0"
QC = {"quant_method": "fake-int4", "bits": 4, "group_size": 128, "sym": True, "layout": "rows", "skip": ["lm_head"]}
CFG = {"architectures": [TEXT], "model_type": "qwen3", "dtype": "bfloat16", "hidden_size": 256,
       "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
       "head_dim": 64, "vocab_size": 4096, "max_position_embeddings": 4096, "tie_word_embeddings": False,
       "quantization_config": QC}
CPU_AVX2 = Hardware("EPYC", 2, ("avx2",), 23.5, 20.0, ())
CPU_AVX512 = Hardware("Xeon", 2, ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512bw"), 23.5, 20.0, ())


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(formats.REGISTRY, "fake", "tests.unit.fake_format")


def packed(mod: str, out_f: int, in_f: int) -> dict:
    return {f"{mod}.qdata": ((out_f, in_f // 2), "U8"), f"{mod}.qscale": ((out_f, in_f // 128), "F16")}


def tensors() -> dict:
    t = {}
    for p, (o, i) in {"self_attn.q_proj": (256, 256), "self_attn.k_proj": (128, 256), "self_attn.v_proj": (128, 256),
                      "self_attn.o_proj": (256, 256), "mlp.gate_proj": (512, 256), "mlp.up_proj": (512, 256),
                      "mlp.down_proj": (256, 512)}.items():
        t.update(packed(f"{LAYER}.{p}", o, i))
    t["lm_head.weight"] = ((4096, 256), "BF16")
    t["model.embed_tokens.weight"] = ((4096, 256), "BF16")
    t["model.norm.weight"] = ((256,), "BF16")
    return t


EXPECTED = sorted({n.rpartition(".")[0] for n in tensors() if n.endswith(".qdata")})


def errs(problems):
    return [p for p in problems if p.level == "error"]


def test_lookups_see_a_registered_format(fake):
    assert catalog.format_named("FAKE_Q4") == "fake" and catalog.format_of_quant_method("Fake_Int4") == "fake"
    assert formats.for_quant_method("fake-int4") is catalog.FORMATS["fake"]
    assert "fake" in catalog.QUANT_FORMATS and parse_formats("gptq,fake-q4") == ["gptq", "fake"]
    f = catalog.FORMATS["fake"]
    assert f.w4a16 and f.vllm_cpu_int4 and f.container == "safetensors" and f.engine == "vllm"


def test_an_unregistered_format_is_unknown():
    assert catalog.format_named("fake") is None and "fake" not in catalog.QUANT_FORMATS
    assert catalog.format_of_quant_method("fake-int4") == "fake-int4"  # a method no format has, as given
    with pytest.raises(UserError, match="unknown format 'fake'"):
        parse_formats("fake")
    assert not info_from_config(CFG, location="/x", served_name="x").is_w4a16


def test_lint_applies_its_rules(fake):
    t = tensors()
    assert lint.check_scheme("fake", QC) == []
    assert any("layout" in p.message for p in lint.check_scheme("fake", {**QC, "layout": "cols"}))
    assert any("bits" in p.message for p in lint.check_scheme("fake", {**QC, "bits": 8}))
    assert any("quant_method" in p.message for p in lint.check_scheme("gptq", QC))
    assert lint.linears(t)[f"{LAYER}.mlp.down_proj"] == {"quantized": True, "out": 256, "in": 512}
    assert lint.check_modules("fake", QC, t, TEXT, EXPECTED) == [] and lint.check_shapes(t) == []
    # vLLM's decision is the format's: a packed module its config skips would be loaded as 16-bit
    p = errs(lint.check_modules("fake", {**QC, "skip": ["lm_head", f"{LAYER}.mlp"]}, t, TEXT, EXPECTED))
    assert any("vLLM would load as 16-bit" in x.message for x in p), p
    # shapes come from its packed tensors: an output width off the CPU kernel's 32-wide tiles
    bad = {**t, **packed(f"{LAYER}.mlp.down_proj", 250, 512)}
    assert any(x.rule == "shapes" and "down_proj 250x512" in x.message for x in errs(lint.check_shapes(bad)))


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    n = {"U8": 1, "F16": 2, "BF16": 2}[dtype]
    for d in shape:
        n *= d
    return n


def _safetensors(path, tensors: dict) -> None:
    header, offset = {}, 0
    for name, (shape, dtype) in tensors.items():
        n = nbytes(shape, dtype)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


@pytest.fixture
def export(tmp_path):
    """A folder as an exporter of the format would write it (weights: safetensors headers over zero bytes)."""
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        (tmp_path / f).write_text("{}")
    _safetensors(tmp_path / "model.safetensors", tensors())
    return tmp_path


def test_lint_folder_passes_an_export_in_it(fake, export):
    assert errs(lint.lint_folder(export, "fake", "text", TEXT, EXPECTED)) == []
    (export / "config.json").write_text(json.dumps({**CFG, "quantization_config": {**QC, "skip": []}}))
    assert any("lm_head" in p.message for p in errs(lint.lint_folder(export, "fake", "text", TEXT)))


def test_serve_args_see_a_w4a16_format(fake):
    i = info_from_config(CFG, location="/art/m-fake", served_name="m-fake", source="local")
    assert (i.quant_method, i.bits, i.is_w4a16) == ("fake-int4", 4, True)
    assert cpu_int4(i, CPU_AVX512) == "w4a8" and "cpu int4: w4a8" in cpu_int4_line(i, CPU_AVX512)
    _, env = vllm_command(i, CPU_AVX512, ServeOptions(python="py"))
    assert env["VLLM_CPU_INT4_W4A8"] == "1"
    with pytest.raises(UserError, match="cannot serve the W4A16 checkpoint 'm-fake'"):
        vllm_command(i, CPU_AVX2, ServeOptions(python="py"))


def test_plan_sizes_a_w4a16_format(fake):
    g, how = fit.estimate_weights(CFG, "fake")
    lin = 256 * (256 + 128 + 128 + 256 + 512 + 512) + 512 * 256
    assert g["decoder_linear"] == lin // 2 + lin // 128 * 2 and "(int4 + fp16 scales)" in how
    assert fit.is_w4a16("fake") and fit.format_of("fake")[0].engine == "vllm"


def test_plan_reads_an_export_in_it(fake, export):
    s = fit.subject(str(export))
    assert s.fmt == "fake"
    p = fit.make_plan(s, CPU_AVX512, weights=fit.header_weights(export))
    assert p.engine == "vllm" and p.weights.source.startswith("header")
    packed_bytes = sum(nbytes(*t) for n, t in tensors().items() if n.startswith(LAYER))
    assert p.weights_by_group["decoder_linear"] == packed_bytes  # its packed tensors count as decoder linears
    assert "serve refuses W4A16" in " ".join(fit.make_plan(s, CPU_AVX2).notes)
