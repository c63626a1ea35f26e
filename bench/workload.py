"""What the benchmark sends: prompts of a fixed token length, an optional image, a fixed output length.

Prompts are slices of local English text (the standard library's docstrings, available offline),
cut to `input_len` tokens with the model's own tokenizer; each request gets a different slice so
that prefix caching cannot turn prefill into a cache hit. Output length is forced (`ignore_eos` +
`min_tokens` = `max_tokens`) so every variant generates the same number of tokens.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


@dataclass(frozen=True)
class Request:
    text: str
    output_len: int
    image: object | None = None  # a PIL image
    index: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str  # "text" or "image"
    requests: tuple[Request, ...]


@functools.lru_cache(maxsize=1)
def _corpus_text() -> str:
    from core.tiny import corpus

    return " ".join(corpus(max_chars=400_000))


def load_tokenizer(model_dir: str | Path | None):
    """The variant's tokenizer (all variants of one base share it); None if it cannot be loaded."""
    if model_dir is None:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # noqa: BLE001 - no tokenizer: fall back to word counts
        return None


def make_prompts(n: int, input_len: int, tokenizer=None, seed: int = 0) -> list[str]:
    """`n` different prompts of `input_len` tokens each (words / 0.75 without a tokenizer)."""
    text = _corpus_text()
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        stride = max(1, (len(ids) - input_len) // max(1, n))
        out = []
        for i in range(n):
            start = ((seed + i) * stride) % max(1, len(ids) - input_len)
            out.append(tokenizer.decode(ids[start:start + input_len]))
        return out
    words = text.split()
    per = max(1, int(input_len * 0.75))
    stride = max(1, (len(words) - per) // max(1, n))
    return [" ".join(words[((seed + i) * stride) % max(1, len(words) - per):][:per]) for i in range(n)]


def default_image():
    """A deterministic 448x448 test picture (gradients and shapes), so runs need no image file."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (448, 448))
    px = img.load()
    for y in range(448):
        for x in range(448):
            px[x, y] = (x * 255 // 447, y * 255 // 447, ((x + y) * 255 // 894))
    d = ImageDraw.Draw(img)
    d.rectangle((60, 60, 200, 200), fill=(240, 240, 240), outline=(0, 0, 0), width=4)
    d.ellipse((240, 240, 400, 400), fill=(20, 40, 200))
    d.line((0, 447, 447, 0), fill=(255, 255, 0), width=6)
    return img


def load_image(path: str | None):
    if path is None:
        return default_image()
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such image: {path}", "pass a PNG/JPEG file with --image, or leave it out for a test picture")
    try:
        img = Image.open(p)
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not an image ({e})", "pass a PNG or JPEG file with --image") from None


def scenarios(modality: str, n: int, input_len: int, output_len: int, tokenizer=None, image=None,
              with_image: bool = True) -> list[Scenario]:
    """Text-only requests for every model; the same prompts with one image for VL models."""
    prompts = make_prompts(n, input_len, tokenizer)
    out = [Scenario("text", tuple(Request(p, output_len, None, i) for i, p in enumerate(prompts)))]
    if modality == "vl" and with_image:
        img = image if image is not None else default_image()
        out.append(Scenario("image", tuple(Request("Describe the picture. " + p, output_len, img, i)
                                           for i, p in enumerate(prompts))))
    return out


QUALITY_PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Explain what a hash table is to a new programmer.",
    "Write a haiku about autumn rain.",
    "List three uses of a paper clip.",
    "Why is the sky blue? Keep it short.",
    "Translate 'good morning, how are you?' into German.",
)
