"""The published shapes of the seed's two models as data, and a shard-by-shard writer of random checkpoints.

- `QWEN3_4B_TEXT`: Qwen/Qwen3-4B-Instruct-2507 (Qwen3ForCausalLM, tied embeddings);
- `QWEN3_VL_8B_TEXT` / `QWEN3_VL_8B_MROPE` / `QWEN3_VL_8B_VISION`: Qwen/Qwen3-VL-8B-Instruct
  (Qwen3VLForConditionalGeneration: `text_config`, its M-RoPE, `vision_config`);
- `text_config()` / `vl_config()`: transformers configs of those shapes (or a scaled-down copy of the same structure,
  for tests), with the special-token ids of a local tokenizer;
- `param_counts()`: parameters by part, analytically from a config dict (no torch), equal to the meta-device count;
- `write_checkpoint()`: random bf16 weights (std 0.02, norms 1, biases 0) with exactly the tensor names and shapes
  of `Cls(config).state_dict()` (tied heads dropped), streamed tensor by tensor in row chunks into safetensors
  shards of at most ~2 GB plus `model.safetensors.index.json`: the working set is one chunk (64 MB), never a
  shard or the model (measured: 0.58 GB peak RSS for the whole process, torch included, writing 4.8 GB at 0.18 GB/s).

Sources of the numbers: each published value below was read from the model's config.json on the Hub (copied into
issue 13) and cross-checked against public copies of those files (a test fixture copied from Qwen3-VL-8B-Instruct's
config.json, Qwen3-4B geometry tables, Qwen3-VL preprocessor configs); transformers 5.19's `Qwen3VLVisionConfig` defaults equal the 8B vision tower
except `out_hidden_size` (3584 there, 4096 for 8B), its `Qwen3VLTextConfig` defaults are *not* the 8B text model
(intermediate 22016, 32 layers, 32 kv heads), so every text value is set explicitly here.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

# Qwen/Qwen3-4B-Instruct-2507 config.json (architectures Qwen3ForCausalLM). rope_theta and max_position_embeddings
# are the 2507 values (5e6, 262144); the original Qwen3-4B had 1e6 / 40960.
QWEN3_4B_TEXT = {
    "hidden_size": 2560,  # config.json hidden_size
    "intermediate_size": 9728,  # config.json intermediate_size
    "num_hidden_layers": 36,  # config.json num_hidden_layers
    "num_attention_heads": 32,  # config.json num_attention_heads (32 x 128 = 4096 != hidden: q_proj 2560 -> 4096)
    "num_key_value_heads": 8,  # config.json num_key_value_heads
    "head_dim": 128,  # config.json head_dim
    "vocab_size": 151936,  # config.json vocab_size (the embedding rows; the tokenizer has 151669 tokens)
    "rope_theta": 5_000_000.0,  # config.json rope_theta (2507)
    "rms_norm_eps": 1e-6,  # config.json rms_norm_eps
    "max_position_embeddings": 262144,  # config.json max_position_embeddings (2507: 256K native context)
    "tie_word_embeddings": True,  # config.json tie_word_embeddings: no lm_head.weight in the checkpoint
}

# Qwen/Qwen3-VL-8B-Instruct config.json `text_config` (tie_word_embeddings false at the top level). Its M-RoPE
# (sections 24/20/20, interleaved) gives a text-only token the same position on all three axes: plain RoPE.
QWEN3_VL_8B_TEXT = {
    "hidden_size": 4096,  # text_config.hidden_size
    "intermediate_size": 12288,  # text_config.intermediate_size
    "num_hidden_layers": 36,  # text_config.num_hidden_layers
    "num_attention_heads": 32,  # text_config.num_attention_heads
    "num_key_value_heads": 8,  # text_config.num_key_value_heads
    "head_dim": 128,  # text_config.head_dim
    "vocab_size": 151936,  # text_config.vocab_size
    "rope_theta": 5_000_000.0,  # text_config.rope_theta
    "rms_norm_eps": 1e-6,  # text_config.rms_norm_eps
    "max_position_embeddings": 262144,  # text_config.max_position_embeddings
    "tie_word_embeddings": False,  # config.json tie_word_embeddings: lm_head.weight is its own tensor
}
QWEN3_VL_8B_MROPE = {"mrope_section": [24, 20, 20], "mrope_interleaved": True}  # text_config.rope_scaling
QWEN3_VL_8B_VISION = {
    "depth": 27,  # vision_config.depth (= transformers 5.19 default)
    "hidden_size": 1152,  # vision_config.hidden_size (= default)
    "intermediate_size": 4304,  # vision_config.intermediate_size (= default)
    "num_heads": 16,  # vision_config.num_heads (= default)
    "patch_size": 16,  # vision_config.patch_size (= default)
    "spatial_merge_size": 2,  # vision_config.spatial_merge_size (= default): 2x2 patches -> one LM token
    "temporal_patch_size": 2,  # vision_config.temporal_patch_size (= default)
    "out_hidden_size": 4096,  # vision_config.out_hidden_size (default 3584 is another size; 8B: the LM width)
    "num_position_embeddings": 2304,  # vision_config.num_position_embeddings (= default; a 48 x 48 table)
    "deepstack_visual_indexes": [8, 16, 24],  # vision_config.deepstack_visual_indexes (= default)
    "hidden_act": "gelu_pytorch_tanh",  # vision_config.hidden_act (= default)
    "in_channels": 3,  # vision_config.in_channels (= default)
}
# Qwen3-VL's preprocessor_config.json: size {"longest_edge": 16777216, "shortest_edge": 65536} (pixels): up to
# 16.8 MP per image = 16384 LM tokens; vLLM's `--mm-processor-kwargs '{"max_pixels": N}'` lowers longest_edge.
QWEN3_VL_IMAGE_PIXELS = {"min_pixels": 65536, "max_pixels": 16777216}
# The published special-token ids (Qwen's 151k tokenizer). Local builds use their own tokenizer's ids instead.
PUBLISHED_TOKEN_IDS = {"bos": 151643, "eos": 151645, "pad": 151643, "vision_start": 151652, "vision_end": 151653,
                       "image": 151655, "video": 151656}

SHAPES = {
    "qwen3-4b-instruct-2507": {"architecture": "Qwen3ForCausalLM", "text": QWEN3_4B_TEXT},
    "qwen3-vl-8b-instruct": {"architecture": "Qwen3VLForConditionalGeneration", "text": QWEN3_VL_8B_TEXT,
                             "mrope": QWEN3_VL_8B_MROPE, "vision": QWEN3_VL_8B_VISION},
}
# catalog family -> the published shape its models have (the seed's Hub models and the local random copies)
FAMILY_SHAPES = {"text": "qwen3-4b-instruct-2507", "shape-text": "qwen3-4b-instruct-2507",
                 "vl": "qwen3-vl-8b-instruct", "shape-vl": "qwen3-vl-8b-instruct"}

MAX_SHARD_BYTES = 2_000_000_000  # "2GB" shards, as save_pretrained writes by default in transformers 5
CHUNK_BYTES = 64 * 2**20  # rows generated and written at a time: the writer's working set
INIT_STD = 0.02  # initializer_range of both configs
SEED = 1234


# ---------------------------------------------------------------- configs

def config_dict(shape: str, ids: dict | None = None) -> dict:
    """The config.json (as a dict) of a published shape; `ids` (keys of PUBLISHED_TOKEN_IDS) replaces token ids."""
    s = SHAPES[shape]
    ids = {**PUBLISHED_TOKEN_IDS, **(ids or {})}
    text = dict(s["text"])
    tie = text.pop("tie_word_embeddings")
    theta = text.pop("rope_theta")
    common = {"hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "initializer_range": INIT_STD,
              "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"], "dtype": "bfloat16"}
    if "vision" not in s:
        return {"architectures": [s["architecture"]], "model_type": "qwen3", **text, **common,
                "rope_parameters": {"rope_type": "default", "rope_theta": theta}, "tie_word_embeddings": tie}
    text_cfg = {**text, **common, "rope_parameters": {"rope_type": "default", "rope_theta": theta, **s["mrope"]}}
    return {"architectures": [s["architecture"]], "model_type": "qwen3_vl", "text_config": text_cfg,
            "vision_config": dict(s["vision"]), "tie_word_embeddings": tie, "dtype": "bfloat16",
            "image_token_id": ids["image"], "video_token_id": ids["video"],
            "vision_start_token_id": ids["vision_start"], "vision_end_token_id": ids["vision_end"],
            "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}


def text_config(overrides: dict | None = None, ids: dict | None = None):
    """Qwen3Config of Qwen3-4B-Instruct-2507 (`overrides`: a scaled-down copy, e.g. for tests)."""
    from transformers import Qwen3Config

    cfg = config_dict("qwen3-4b-instruct-2507", ids)
    cfg.update(overrides or {})
    cfg.pop("model_type")
    c = Qwen3Config(**cfg)
    c.architectures = ["Qwen3ForCausalLM"]
    return c


def vl_config(text_overrides: dict | None = None, vision_overrides: dict | None = None, ids: dict | None = None):
    """Qwen3VLConfig of Qwen3-VL-8B-Instruct (overrides: a scaled-down copy of the same structure)."""
    from transformers import Qwen3VLConfig

    cfg = config_dict("qwen3-vl-8b-instruct", ids)
    cfg["text_config"].update(text_overrides or {})
    cfg["vision_config"].update(vision_overrides or {})
    if text_overrides and "hidden_size" in text_overrides and "out_hidden_size" not in (vision_overrides or {}):
        cfg["vision_config"]["out_hidden_size"] = text_overrides["hidden_size"]
    cfg.pop("model_type")
    c = Qwen3VLConfig(**cfg)
    c.architectures = ["Qwen3VLForConditionalGeneration"]
    return c


# ---------------------------------------------------------------- parameter counts (pure)

def _text_params(t: dict) -> dict:
    h, i, n = int(t["hidden_size"]), int(t["intermediate_size"]), int(t["num_hidden_layers"])
    heads = int(t["num_attention_heads"])
    kv = int(t.get("num_key_value_heads") or heads)
    hd = int(t.get("head_dim") or h // heads)
    v = int(t["vocab_size"])
    linear = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * i  # q, k, v, o, gate, up, down
    norms = 2 * h + 2 * hd  # input / post-attention RMSNorm, q_norm / k_norm
    return {"embedding": v * h, "decoder_linear": n * linear, "other": n * norms + h, "lm_head": v * h}


def _vision_params(vc: dict) -> int:
    h, i, d = int(vc["hidden_size"]), int(vc["intermediate_size"]), int(vc["depth"])
    p, tp, c = int(vc["patch_size"]), int(vc.get("temporal_patch_size", 2)), int(vc.get("in_channels", 3))
    m = int(vc.get("spatial_merge_size", 2)) ** 2 * h
    out = int(vc["out_hidden_size"])
    patch = h * c * tp * p * p + h  # Conv3d with bias
    pos = int(vc["num_position_embeddings"]) * h
    block = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)  # 2 LayerNorms, qkv, proj, mlp
    merger = 2 * h + (m * m + m) + (m * out + out)  # LayerNorm(h), fc1, fc2
    deep = 2 * m + (m * m + m) + (m * out + out)  # postshuffle LayerNorm(4h), fc1, fc2
    return patch + pos + d * block + merger + len(vc.get("deepstack_visual_indexes") or []) * deep


def param_counts(cfg: dict) -> dict:
    """Parameters by part of a Qwen3 / Qwen3-VL config dict (config.json form): embedding, decoder_linear, lm_head
    (0 when tied), other (norms), vision, total. Equal to `sum(p.numel())` of the model on the meta device."""
    text = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    out = _text_params(text)
    tied = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if tied:
        out["lm_head"] = 0
    out["vision"] = _vision_params(cfg["vision_config"]) if isinstance(cfg.get("vision_config"), dict) else 0
    out["total"] = sum(out.values())
    return out


# ---------------------------------------------------------------- the writer

def model_class(config):
    from transformers import Qwen3ForCausalLM, Qwen3VLForConditionalGeneration

    arch = (config.architectures or [None])[0]
    classes = {"Qwen3ForCausalLM": Qwen3ForCausalLM,
               "Qwen3VLForConditionalGeneration": Qwen3VLForConditionalGeneration}
    if arch not in classes:
        raise ValueError(f"no writer for architecture {arch}")
    return classes[arch]


def meta_model(config):
    """The model on the meta device: names, shapes and classes of every tensor, no memory."""
    import torch

    with torch.device("meta"):
        return model_class(config)._from_config(config, dtype=torch.bfloat16)


def tensor_specs(model) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor a checkpoint of `model` holds, in state_dict order: the state_dict's
    names minus tied duplicates (a tied lm_head is the embedding: no lm_head.weight). init: ones (norm weights),
    zeros (biases), normal."""
    params = {n for n, _ in model.named_parameters()}  # tied parameters appear once, under their first name
    buffers = {n for n, _ in model.named_buffers()}
    out = []
    for name, t in model.state_dict().items():
        if name not in params and name not in buffers:
            continue
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if name.endswith(".bias"):
            init = "zeros"
        elif "norm" in type(owner).__name__.lower() and name.endswith(".weight"):
            init = "ones"
        else:
            init = "normal"
        out.append((name, tuple(t.shape), init))
    return out


def plan_shards(specs: list, max_bytes: int = MAX_SHARD_BYTES, itemsize: int = 2) -> list[list]:
    """Greedy shards in order, each at most `max_bytes` (a tensor larger than that gets a shard of its own)."""
    shards, cur, size = [], [], 0
    for s in specs:
        b = math.prod(s[1]) * itemsize
        if cur and size + b > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += b
    if cur:
        shards.append(cur)
    return shards


def _header(shard: list, itemsize: int = 2) -> bytes:
    meta, off = {}, 0
    for name, shape, _ in shard:
        n = math.prod(shape) * itemsize
        meta[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    meta["__metadata__"] = {"format": "pt"}
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it


def _write_tensor(f, name: str, shape: tuple, init: str, zero_rows: set[int], seed: int) -> None:
    import torch

    rows = shape[0] if shape else 1
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    per = max(1, CHUNK_BYTES // (2 * row))
    g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    for r0 in range(0, rows, per):
        n = min(per, rows - r0)
        chunk_shape = (n, *shape[1:]) if shape else ()
        if init == "ones":
            t = torch.ones(chunk_shape, dtype=torch.bfloat16)
        elif init == "zeros":
            t = torch.zeros(chunk_shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(chunk_shape, dtype=torch.bfloat16).normal_(0.0, INIT_STD, generator=g)
        for z in zero_rows:
            if r0 <= z < r0 + n:
                t[z - r0] = 0
        f.write(t.contiguous().view(torch.int16).numpy().data)


def write_checkpoint(config, out: str | Path, *, max_shard_bytes: int = MAX_SHARD_BYTES, seed: int = SEED,
                     zero_rows: dict[str, list[int]] | None = None, log=None) -> dict:
    """Random bf16 weights for `config` into folder `out` (config.json + shards + index), one row chunk in memory at
    a time. `zero_rows`: tensor name -> rows set to 0 (e.g. the lm_head rows of special tokens, so that greedy
    decoding of a random model never stops at once). Returns {files, tensors, total_size, params}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(meta_model(config))
    shards = plan_shards(specs, max_shard_bytes)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    zero_rows = zero_rows or {}
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        header = _header(shard)
        with open(out / fname, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for name, shape, init in shard:
                _write_tensor(f, name, shape, init, set(zero_rows.get(name, ())), seed)
                weight_map[name] = fname
                total += math.prod(shape) * 2
        if log:
            log(f"wrote {fname} ({sum(math.prod(s[1]) for s in shard) * 2 / 1e9:.2f} GB, {len(shard)} tensors)")
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)
    return {"files": names, "tensors": len(specs), "total_size": total,
            "params": sum(math.prod(s[1]) for s in specs)}


def checkpoint_bytes(cfg: dict) -> int:
    """bf16 bytes `write_checkpoint` writes for a config dict (disk check before a build)."""
    return param_counts(cfg)["total"] * 2
