"""Tiny local Qwen3 / Qwen3-VL models: the real architecture classes, small dims, built offline.

- tokenizer: byte-level BPE trained on local text with Qwen's special tokens and a ChatML template
  that renders image parts as `<|vision_start|><|image_pad|><|vision_end|>`;
- `tiny-text`: Qwen3ForCausalLM (hidden 256), briefly trained on chat-formatted local text so that
  quantization error is measurable and answers end with <|im_end|>;
- `tiny-vl`: Qwen3VLForConditionalGeneration with a real Qwen3VLProcessor, briefly trained on the same text and on
  synthetic pictures with questions about them (core/tiny_scenes.py), so that its answers depend on the picture;
- `bench-text`: the Qwen3-0.6B shape with random weights, memory-bound on a CPU, for benchmarks;
- `shape-text` / `shape-vl`: the exact Qwen3-4B-Instruct-2507 / Qwen3-VL-8B-Instruct shapes (core/shapes.py),
  random weights written shard by shard (8.0 / 17.5 GB of disk, ~64 MB of RAM), this tokenizer and processor.

Every folder is what `from_pretrained` / vLLM would load from the Hub. Quantized linears keep in/out
features multiples of 128 (4-bit kernel tiles, group size 128).
"""
from __future__ import annotations

import ast
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

from core.artifact import atomic_folder

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or part['type'] == 'video_url' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
VOCAB = 4096  # tokenizer size; the models' vocab_size (embedding rows) equals it (a multiple of 128)

TEXT_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 64}
BENCH_SHAPE = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
               "num_key_value_heads": 8, "head_dim": 128}  # Qwen3-0.6B
VISION_SHAPE = {"depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 2, "patch_size": 16,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "deepstack_visual_indexes": [1],
                "num_position_embeddings": 2304}
IMAGE_PIXELS = {"min_pixels": 32 * 32, "max_pixels": 256 * 256}  # at most 64 image tokens per image
TRAIN_STEPS = int(os.environ.get("QWEN_W4_TINY_TRAIN_STEPS", "150"))  # ~40 s on 2 idle cores
SEED = 1234


def _log(msg: str) -> None:
    print(f"[tiny] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- local text

def corpus(max_chars: int = 1_500_000) -> list[str]:
    """English prose available on every Python install: docstrings of the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for f in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) > 40:
                    d = " ".join(d.split())
                    docs.append(d)
                    total += len(d)
        if total >= max_chars:
            break
    return docs


def chat_samples(docs: list[str]) -> list[list[dict]]:
    """Docstrings as one-turn chats: the first sentence asks, the rest answers."""
    out = []
    for d in docs:
        head, sep, rest = d.partition(". ")
        if sep and len(rest) > 20:
            out.append([{"role": "user", "content": f"Explain: {head}."},
                        {"role": "assistant", "content": rest[:600]}])
    return out


# ---------------------------------------------------------------- tokenizer / processor

def build_tokenizer(docs: list[str] | None = None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = docs if docs is not None else corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
        model_max_length=32768, clean_up_tokenization_spaces=False,
    )


def build_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    size = {"shortest_edge": IMAGE_PIXELS["min_pixels"], "longest_edge": IMAGE_PIXELS["max_pixels"]}
    image = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 4096, "longest_edge": 64 * 64 * 8})
    return Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer,
                            chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------- configs and models

def _ids(tokenizer) -> dict:
    t = tokenizer.convert_tokens_to_ids
    return {"eos": t("<|im_end|>"), "pad": t("<|endoftext|>"), "image": t("<|image_pad|>"),
            "video": t("<|video_pad|>"), "vstart": t("<|vision_start|>"), "vend": t("<|vision_end|>"),
            "endoftext": t("<|endoftext|>")}


def text_config(tokenizer, shape: dict):
    from transformers import Qwen3Config

    ids = _ids(tokenizer)
    return Qwen3Config(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1_000_000.0,
                       tie_word_embeddings=False, eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                       bos_token_id=ids["endoftext"], dtype="bfloat16", **shape)


def vl_config(tokenizer):
    from transformers import Qwen3VLConfig

    ids = _ids(tokenizer)
    text = dict(vocab_size=VOCAB, max_position_embeddings=32768, dtype="bfloat16",
                rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                 "mrope_section": [12, 10, 10], "mrope_interleaved": True},
                eos_token_id=ids["eos"], pad_token_id=ids["pad"], bos_token_id=ids["endoftext"], **TEXT_SHAPE)
    vision = dict(out_hidden_size=TEXT_SHAPE["hidden_size"], **VISION_SHAPE)
    return Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                         video_token_id=ids["video"], vision_start_token_id=ids["vstart"],
                         vision_end_token_id=ids["vend"], tie_word_embeddings=False, dtype="bfloat16",
                         eos_token_id=ids["eos"], pad_token_id=ids["pad"])


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    ids = _ids(tokenizer)
    return GenerationConfig(eos_token_id=[ids["eos"], ids["endoftext"]], pad_token_id=ids["pad"],
                            bos_token_id=ids["endoftext"], do_sample=False, max_new_tokens=256)


def _silence_special_logits(model, tokenizer) -> None:
    """Random models would often stop at once: zero lm_head rows of special tokens so greedy
    decoding of an untrained model never picks them (answers run to max_tokens)."""
    import torch

    with torch.no_grad():
        for tid in _ids(tokenizer).values():
            model.lm_head.weight[tid].zero_()


def _chat_tokens(tokenizer, docs: list[str]):
    """The chat-formatted local text (chat_samples) as one long tensor of token ids, for the training runs."""
    import torch

    ids: list[int] = []
    for chat in chat_samples(docs):
        ids += tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
    return torch.tensor(ids, dtype=torch.long)


def train_text(model, tokenizer, docs: list[str], steps: int, seq: int = 128, batch: int = 8) -> dict:
    """A short, deterministic next-token training run on chat-formatted local text (CPU)."""
    import torch

    torch.manual_seed(SEED)
    data = _chat_tokens(tokenizer, docs)
    n = (len(data) - 1) // seq
    model.float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(SEED)
    step, t0, loss = 0, time.time(), float("nan")
    first = None
    for step in range(1, steps + 1):
        rows = torch.randint(0, n, (batch,), generator=g) * seq
        x = torch.stack([data[r:r + seq + 1] for r in rows])
        out = model(input_ids=x[:, :-1])
        logits = out.logits.float()
        l = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = float(l.detach())
        first = loss if first is None else first
    model.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "first_loss": first, "final_loss": loss,
            "tokens_seen": step * batch * seq}


VL_TRAIN_STEPS = int(os.environ.get("QWEN_W4_TINY_VL_TRAIN_STEPS", "600"))  # a quarter text; ~150 s on 2 cores


def _image_batch(processor, triples) -> dict:
    """Model inputs with labels for (picture, question, answer) triples: every token is a target except padding and
    the picture's own placeholder tokens."""
    ids = _ids(processor.tokenizer)
    texts = [processor.apply_chat_template([
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
        {"role": "assistant", "content": a}], tokenize=False) for _, q, a in triples]
    enc = processor(text=texts, images=[img for img, _, _ in triples], padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[(labels == ids["pad"]) | (labels == ids["image"]) | (enc["attention_mask"] == 0)] = -100
    return {**enc, "labels": labels}


def train_vl(model, processor, docs: list[str], steps: int, seq: int = 128, batch: int = 8) -> dict:
    """The tiny VL's short, deterministic run (CPU): every fourth step is chat-formatted local text (as
    train_text), the others synthetic pictures with questions about them (core/tiny_scenes), so that answers depend on the
    picture. The vision tower is trained too."""
    import random

    import torch

    from core import tiny_scenes

    torch.manual_seed(SEED)
    data = _chat_tokens(processor.tokenizer, docs)
    n = (len(data) - 1) // seq
    rng, g = random.Random(SEED), torch.Generator().manual_seed(SEED)
    model.float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    t0, losses = time.time(), {"text": [], "image": []}
    for step in range(1, steps + 1):
        if step % 4 == 1:
            rows = torch.randint(0, n, (batch,), generator=g) * seq
            x = torch.stack([data[r:r + seq + 1] for r in rows])
            inputs, kind = {"input_ids": x, "labels": x}, "text"
        else:
            inputs, kind = _image_batch(processor, tiny_scenes.samples(rng, batch)), "image"
        loss = model(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses[kind].append(float(loss.detach()))
    model.eval()
    return {"steps": steps, "seconds": round(time.time() - t0, 1),
            **{f"{k}_first_loss": v[0] for k, v in losses.items() if v},
            **{f"{k}_final_loss": sum(v[-5:]) / len(v[-5:]) for k, v in losses.items() if v}}


def _save_common(out: Path, tokenizer, meta: dict) -> None:
    tokenizer.save_pretrained(out)
    _generation_config(tokenizer).save_pretrained(out)
    (out / "tiny_model.json").write_text(json.dumps(meta, indent=2) + "\n")


def build(alias: str, out: Path) -> Path:
    """Build `alias` (a key of BUILDERS) into folder `out` (written atomically)."""
    import torch

    if alias not in BUILDERS:
        raise ValueError(f"no tiny builder for {alias}")
    with atomic_folder(out) as tmp:
        t0 = time.time()
        torch.manual_seed(SEED)
        docs = corpus()
        tokenizer = build_tokenizer(docs)
        meta = BUILDERS[alias](tmp, tokenizer, docs)
        meta.update(alias=alias, build_seconds=round(time.time() - t0, 1), seed=SEED)
        _save_common(tmp, tokenizer, meta)
        for f in [tmp, *tmp.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
    _log(f"built {alias} in {meta['build_seconds']} s -> {out}")
    return Path(out)


def _build_text(out: Path, tokenizer, docs) -> dict:
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM(text_config(tokenizer, TEXT_SHAPE))
    _log(f"training tiny-text for {TRAIN_STEPS} steps on local text")
    stats = train_text(model, tokenizer, docs, TRAIN_STEPS)
    model.to(torch.bfloat16).save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "training": stats}


def _build_vl(out: Path, tokenizer, docs) -> dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration(vl_config(tokenizer))
    processor = build_processor(tokenizer)
    _log(f"training tiny-vl for {VL_TRAIN_STEPS} steps on local text and synthetic pictures")
    stats = train_vl(model, processor, docs, VL_TRAIN_STEPS)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json, for older readers
    return {"params": sum(p.numel() for p in model.parameters()), "training": stats}


def _build_bench(out: Path, tokenizer, docs) -> dict:
    import torch
    from transformers import Qwen3ForCausalLM

    with torch.device("cpu"):
        model = Qwen3ForCausalLM(text_config(tokenizer, BENCH_SHAPE)).to(torch.bfloat16)
    _silence_special_logits(model, tokenizer)
    model.save_pretrained(out)
    return {"params": sum(p.numel() for p in model.parameters()), "training": None}


def _build_shape(out: Path, tokenizer, vl: bool) -> dict:
    """A real-shape family (core/shapes.py): the published config with this tokenizer's special ids (its vocab is
    small; the embedding keeps all 151936 rows), random bf16 weights written shard by shard (~64 MB in RAM)."""
    import shutil

    from core import shapes
    from core.errors import UserError

    ids = _ids(tokenizer)
    sid = {"bos": ids["endoftext"], "eos": ids["eos"], "pad": ids["pad"], "vision_start": ids["vstart"],
           "vision_end": ids["vend"], "image": ids["image"], "video": ids["video"]}
    shape = "qwen3-vl-8b-instruct" if vl else "qwen3-4b-instruct-2507"
    need = shapes.checkpoint_bytes(shapes.config_dict(shape))
    free = shutil.disk_usage(out).free
    if free < need + 2**30:
        raise UserError(f"building the {shape} shape needs {need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free "
                        f"under {out.parent}", "free disk space or point QWEN_W4_HOME at a larger disk")
    config = shapes.vl_config(ids=sid) if vl else shapes.text_config(ids=sid)
    head = "model.embed_tokens.weight" if getattr(config, "tie_word_embeddings", False) else "lm_head.weight"
    _log(f"writing {shape} ({need / 1e9:.1f} GB bf16, random weights) shard by shard")
    res = shapes.write_checkpoint(config, out, zero_rows={head: sorted(set(ids.values()))}, log=_log)
    if vl:
        processor = build_processor(tokenizer)
        processor.save_pretrained(out)
        processor.image_processor.save_pretrained(out)
    return {"params": res["params"], "shape": shape, "shards": len(res["files"]), "bytes": res["total_size"],
            "training": None}


BUILDERS = {"tiny-text": _build_text, "tiny-vl": _build_vl, "bench-text": _build_bench,
            "shape-text": lambda out, tok, docs: _build_shape(out, tok, vl=False),
            "shape-vl": lambda out, tok, docs: _build_shape(out, tok, vl=True)}


def ensure(alias: str, root: Path) -> Path:
    """The local folder of a tiny base model under `root` (the artifact root: core.catalog.resolve passes it),
    built on first use."""
    import fcntl

    out = Path(root) / alias
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{alias}.lock", "w") as lock:  # one builder at a time; others wait and reuse
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").is_file():
            return out
        return build(alias, out)
