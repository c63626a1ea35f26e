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
    """`n` different prompts of `input_len` tokens each (words / 0.75 without a tokenizer), evenly spread
    over the local text starting `seed` tokens in."""
    text = _corpus_text()
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        span = max(1, len(ids) - input_len)
        stride = max(1, span // max(1, n))
        return [tokenizer.decode(ids[(seed + i * stride) % span:][:input_len]) for i in range(n)]
    words = text.split()
    per = max(1, int(input_len * 0.75))
    span = max(1, len(words) - per)
    stride = max(1, span // max(1, n))
    return [" ".join(words[(seed + i * stride) % span:][:per]) for i in range(n)]


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


def marked(image, index: int):
    """A copy of `image` with `index` written as a tiny black/white pattern in its top-left corner, so that
    every request carries a different image (no cache hit in the server) that looks the same."""
    img = image.convert("RGB").copy()
    px = img.load()
    side = max(1, min(img.size) // 64)
    for bit in range(16):
        color = (255, 255, 255) if (index >> bit) & 1 else (0, 0, 0)
        for dy in range(side):
            for dx in range(side):
                x, y = bit * side + dx, dy
                if x < img.size[0] and y < img.size[1]:
                    px[x, y] = color
    return img


def scenarios(modality: str, n: int, input_len: int, output_len: int, tokenizer=None, image=None,
              with_image: bool = True, seed: int = 0) -> list[Scenario]:
    """`n` distinct text-only requests for every model; for VL models also `n` with one image each.

    Every request differs from every other (its own slice of text; its own marked copy of the image),
    so a server's prefix and image caches never turn a measured request into a cache hit; `seed`
    moves the slices, so repeated runs against one long-running server do not either."""
    prompts = make_prompts(n, input_len, tokenizer, seed=seed)
    out = [Scenario("text", tuple(Request(p, output_len, None, i) for i, p in enumerate(prompts)))]
    if modality == "vl" and with_image:
        img = image if image is not None else default_image()
        out.append(Scenario("image", tuple(Request("Describe the picture. " + p, output_len, marked(img, i), i)
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
