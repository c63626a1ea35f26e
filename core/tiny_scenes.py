"""Synthetic pictures with their descriptions: what the tiny VL model is trained on, so that its answers depend on
the picture (and quantization error on image-conditioned tokens is measurable).

A scene is a background (plain or a gradient) with one to three coloured shapes (circle, square, bar, line); every
question is one of the kinds the project asks of pictures (quantize/verify.VL_PROMPTS, bench's image prompts), each
answered from the scene's objects. Deterministic for a given `random.Random`.
"""
from __future__ import annotations

import random

COLOURS = {"red": (220, 30, 30), "green": (40, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30),
           "white": (245, 245, 245), "black": (20, 20, 20), "orange": (240, 140, 20), "purple": (140, 40, 180)}
SHAPES = ("circle", "square", "bar", "line")
BACKGROUNDS = ("white", "black", "gradient")


def _draw(d, shape: str, rgb: tuple, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=rgb)
    elif shape == "square":
        side = min(x1 - x0, y1 - y0)
        d.rectangle((x0, y0, x0 + side, y0 + side), fill=rgb)
    elif shape == "bar":
        d.rectangle((x0, y0 + (y1 - y0) // 3, x1, y0 + 2 * (y1 - y0) // 3), fill=rgb)
    else:
        d.line((x0, y1, x1, y0), fill=rgb, width=max(3, (x1 - x0) // 12))


def scene(rng: random.Random, size: int = 256):
    """(picture, objects [(colour, shape)], background name)."""
    from PIL import Image, ImageDraw

    background = rng.choice(BACKGROUNDS)
    if background == "gradient":
        img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        tint = Image.new("RGB", (size, size), tuple(rng.randrange(60, 200) for _ in range(3)))
        img = Image.blend(img, tint, 0.5)
    else:
        img = Image.new("RGB", (size, size), COLOURS[background])
    d = ImageDraw.Draw(img)
    cells = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], rng.randint(1, 2))
    objects = []
    for cx, cy in cells:
        shape = rng.choice(SHAPES)
        colour = rng.choice([c for c in COLOURS if c != background])
        half = size // 2
        m = rng.randrange(size // 16, size // 8)
        _draw(d, shape, COLOURS[colour], (cx * half + m, cy * half + m, (cx + 1) * half - m, (cy + 1) * half - m))
        objects.append((colour, shape))
    return img, objects, background


def _listing(objects: list[tuple[str, str]]) -> str:
    parts = [f"a {c} {s}" for c, s in objects]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def question_answer(rng: random.Random, objects: list[tuple[str, str]], background: str) -> tuple[str, str]:
    """One question about the scene and its answer."""
    where = "a gradient background" if background == "gradient" else f"a {background} background"
    kind = rng.randrange(4)
    if kind == 0:
        return "Describe this image.", f"The picture shows {_listing(objects)} on {where}."
    if kind == 1:
        colours = sorted({c for c, _ in objects})
        shapes = sorted({s for _, s in objects})
        return ("What colours and shapes are in the picture?",
                f"The colours are {' and '.join(colours)}; the shapes are {' and '.join(shapes)}: {_listing(objects)}.")
    shape = rng.choice(SHAPES)
    found = [c for c, s in objects if s == shape]
    q = f"Is there a {shape} in this image? Answer briefly."
    return q, (f"Yes, a {found[0]} {shape}." if found else f"No, there is no {shape}.")


def samples(rng: random.Random, n: int, size: int = 256) -> list[tuple[object, str, str]]:
    """n (picture, question, answer) triples."""
    out = []
    for _ in range(n):
        img, objects, background = scene(rng, size)
        q, a = question_answer(rng, objects, background)
        out.append((img, q, a))
    return out
