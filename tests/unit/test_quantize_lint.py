"""Lint rules fed hand-made configs and tensor maps (the shapes vLLM and transformers would see)."""
import copy

from quantize import lint

VL = "Qwen3VLForConditionalGeneration"
TEXT = "Qwen3ForCausalLM"
LANG = "model.language_model.layers.0"


def _q(prefix, out_f, in_f, awq=False):
    """Packed int4 tensors of one Linear (GPTQ layout, or AWQ's)."""
    g = in_f // 128
    if awq:
        return {f"{prefix}.qweight": ((in_f, out_f // 8), "I32"), f"{prefix}.qzeros": ((g, out_f // 8), "I32"),
                f"{prefix}.scales": ((g, out_f), "F16")}
    return {f"{prefix}.qweight": ((in_f // 8, out_f), "I32"), f"{prefix}.qzeros": ((g, out_f // 8), "I32"),
            f"{prefix}.scales": ((g, out_f), "F16")}


def _w(prefix, out_f, in_f, dt="BF16"):
    return {f"{prefix}.weight": ((out_f, in_f), dt)}


def vl_tensors(awq=False, vision_quantized=False):
    t = {}
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        t.update(_q(f"{LANG}.self_attn.{p}", 256, 256, awq))
    for p in ("gate_proj", "up_proj"):
        t.update(_q(f"{LANG}.mlp.{p}", 512, 256, awq))
    t.update(_q(f"{LANG}.mlp.down_proj", 256, 512, awq))
    t.update(_w("lm_head", 4096, 256))
    t.update({"model.language_model.embed_tokens.weight": ((4096, 256), "BF16")})
    vis = _q if vision_quantized else _w
    t.update(vis("model.visual.blocks.0.attn.qkv", 384, 128))
    t.update(vis("model.visual.merger.linear_fc1", 512, 512))
    t.update(vis("model.visual.deepstack_merger_list.0.linear_fc1", 512, 512))
    return t


EXPECTED = [f"{LANG}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
    [f"{LANG}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
        "block_name_to_quantize": "model.language_model.layers",
        "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                         ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": False, "version": "gemm",
       "modules_to_not_convert": ["model.visual.merger.linear_fc1", "model.visual.deepstack_merger_list.0",
                                  "lm_head", "model.visual.blocks"]}
AR = {"quant_method": "auto-round", "bits": 4, "group_size": 128, "sym": True,
      "block_name_to_quantize": "model.language_model.layers", "packing_format": "auto_round:auto_gptq"}


def rules(problems):
    return [(p.level, p.rule) for p in problems]


def errs(problems):
    return [p for p in problems if p.level == "error"]


def test_good_exports_pass():
    for fmt, qc, awq in (("gptq", GPTQ, False), ("awq", AWQ, True), ("autoround", AR, False)):
        t = vl_tensors(awq)
        assert errs(lint.check_scheme(fmt, qc)) == []
        assert errs(lint.check_modules(fmt, qc, t, VL, EXPECTED)) == [], fmt
        assert errs(lint.check_shapes(t)) == []


def test_gptq_without_module_list_is_misread_by_transformers():
    """AutoRound's raw GPTQ export: vLLM infers the list from dtypes, but transformers' loader would quantize
    the vision blocks (the known failure)."""
    qc = {k: v for k, v in GPTQ.items() if k not in ("block_name_to_quantize", "modules_in_block_to_quantize")}
    p = errs(lint.check_modules("gptq", qc, vl_tensors(), VL, EXPECTED))
    assert p and "transformers" in p[0].message and "model.visual.blocks.0.attn.qkv" in p[0].message


def test_awq_list_that_misses_the_merger():
    qc = copy.deepcopy(AWQ)
    qc["modules_to_not_convert"] = ["lm_head", "model.visual.blocks"]  # merger forgotten
    p = errs(lint.check_modules("awq", qc, vl_tensors(awq=True), VL, EXPECTED))
    assert any("vLLM would load as quantized" in x.message and "merger" in x.message for x in p)


def test_awq_list_in_vllm_names_that_do_not_match():
    """Module names must survive vLLM's renaming (model.visual. -> visual.); a list written in another
    naming never matches, so vLLM would treat the merger as quantized."""
    qc = copy.deepcopy(AWQ)
    qc["modules_to_not_convert"] = ["lm_head", "vision_tower.blocks", "vision_tower.merger",
                                    "vision_tower.deepstack_merger_list"]
    p = errs(lint.check_modules("awq", qc, vl_tensors(awq=True), VL, EXPECTED))
    assert p and any("visual" in x.message for x in p)


def test_autoround_without_block_list_quantizes_vision_in_vllm_view():
    qc = {k: v for k, v in AR.items() if k != "block_name_to_quantize"}
    p = errs(lint.check_modules("autoround", qc, vl_tensors(), VL, EXPECTED))
    assert any("vLLM would load as quantized" in x.message for x in p)


def test_quantized_vision_tower_is_refused():
    qc = copy.deepcopy(AR)
    qc["block_name_to_quantize"] = "model.language_model.layers,model.visual.blocks"
    t = vl_tensors(vision_quantized=True)
    p = errs(lint.check_modules("autoround", qc, t, VL, EXPECTED))
    assert any(x.rule == "layout" and "vision" in x.message for x in p)


def test_fused_parts_must_agree():
    t = vl_tensors()
    for k in [k for k in t if k.startswith(f"{LANG}.self_attn.k_proj")]:
        del t[k]
    t.update(_w(f"{LANG}.self_attn.k_proj", 256, 256))
    p = errs(lint.check_modules("autoround", AR, t, VL))
    assert any("qkv_proj" in x.message for x in p)


def test_scheme_rules():
    assert any("sym" in p.message for p in lint.check_scheme("gptq", {**GPTQ, "sym": False}))
    assert any("desc_act" in p.message for p in lint.check_scheme("gptq", {**GPTQ, "desc_act": True}))
    assert any("zero_point" in p.message for p in lint.check_scheme("awq", {**AWQ, "zero_point": True}))
    assert any("bits" in p.message for p in lint.check_scheme("autoround", {**AR, "bits": 8}))
    assert any("group_size" in p.message for p in lint.check_scheme("autoround", {**AR, "group_size": 32}))
    assert any("quant_method" in p.message for p in lint.check_scheme("awq", GPTQ))
    assert lint.check_scheme("gptq", None)[0].message.startswith("config.json has no quantization_config")
    ct = {"quant_method": "compressed-tensors",
          "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 128, "symmetric": False}}}}
    assert any("asymmetric" in p.message for p in lint.check_scheme("compressed-tensors", ct))


def test_shapes_tiles():
    t = {}
    t.update(_q("model.layers.0.mlp.down_proj", 200, 256))  # out 200: not a multiple of 32
    p = lint.check_shapes(t)
    assert ("error", "shapes") in rules(p) and "multiples of 32" in errs(p)[0].message
    t = _q("model.layers.0.mlp.down_proj", 96, 128)  # CPU ok, Marlin (out % 64) not: warning only
    p = lint.check_shapes(t)
    assert rules(p) == [("warning", "shapes")]
    t = {"model.layers.0.mlp.down_proj.qweight": ((24, 256), "I32"),  # in = 192: not a multiple of 128
         "model.layers.0.mlp.down_proj.scales": ((1, 256), "F16")}
    assert any("group size" in x.message for x in errs(lint.check_shapes(t)))


def test_files():
    base = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "chat_template.jinja"}
    assert lint.check_files(base, "text") == []
    p = lint.check_files(base, "vl")
    assert {x.message.split()[0] for x in p} == {"preprocessor_config.json", "processor_config.json"}
    p = lint.check_files(base - {"chat_template.jinja", "model.safetensors"}, "text", require_card=True)
    msgs = " | ".join(x.message for x in p)
    assert "no .safetensors" in msgs and "chat template" in msgs and "README.md" in msgs


def test_vllm_names():
    assert lint.vllm_name("model.visual.merger.linear_fc1", VL) == "visual.merger.linear_fc1"
    assert lint.vllm_name("model.language_model.layers.0.mlp.up_proj", VL) == "language_model.model.layers.0.mlp.up_proj"
    assert lint.vllm_name("model.layers.0.mlp.up_proj", TEXT) == "model.layers.0.mlp.up_proj"
