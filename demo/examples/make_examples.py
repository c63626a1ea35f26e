"""The demo's example images, drawn with PIL (no downloads): a bar chart and a shop sign.

    python -m demo.examples.make_examples          # rewrite the PNGs next to this file
    python -m demo.examples.make_examples OUT_DIR  # write them elsewhere

Each image goes with the question the demo suggests for it (EXAMPLES). The drawing uses Pillow's
built-in font, so the files come out the same on every machine with the same Pillow.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

# (file name, suggested question)
EXAMPLES: list[tuple[str, str]] = [
    ("bar_chart.png", "Which fruit sold the most, and about how many?"),
    ("shop_sign.png", "What does the sign say, and when is the shop open?"),
]

SALES = [("Apples", 42), ("Pears", 17), ("Plums", 29), ("Figs", 8)]
BAR_COLORS = ["#d94f3d", "#7fb04a", "#6b4fa0", "#e0a030"]


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_bar_chart(width: int = 480, height: int = 320) -> Image.Image:
    """A titled bar chart of fruit sales with axis, ticks and value labels."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((width // 2, 14), "Fruit sold this week", fill="black", font=_font(22), anchor="mt")
    left, right, top, bottom = 56, width - 20, 56, height - 44
    vmax = 50
    for v in range(0, vmax + 1, 10):  # grid and y ticks
        y = bottom - (bottom - top) * v / vmax
        d.line([(left, y), (right, y)], fill="#dddddd", width=1)
        d.text((left - 8, y), str(v), fill="black", font=_font(14), anchor="rm")
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    slot = (right - left) / len(SALES)
    for i, ((name, value), color) in enumerate(zip(SALES, BAR_COLORS)):
        x0 = left + slot * i + slot * 0.18
        x1 = left + slot * (i + 1) - slot * 0.18
        y = bottom - (bottom - top) * value / vmax
        d.rectangle([x0, y, x1, bottom - 1], fill=color)
        d.text(((x0 + x1) / 2, y - 4), str(value), fill="black", font=_font(15), anchor="mb")
        d.text(((x0 + x1) / 2, bottom + 8), name, fill="black", font=_font(15), anchor="mt")
    return img


def draw_shop_sign(width: int = 480, height: int = 320) -> Image.Image:
    """A hanging shop sign with a name and opening hours, on a brick-coloured wall."""
    img = Image.new("RGB", (width, height), "#b5654a")
    d = ImageDraw.Draw(img)
    for row, y in enumerate(range(0, height, 22)):  # brick courses
        d.line([(0, y), (width, y)], fill="#8e4c37", width=2)
        off = 0 if row % 2 else 30
        for x in range(off, width, 60):
            d.line([(x, y), (x, y + 22)], fill="#8e4c37", width=2)
    x0, y0, x1, y1 = 60, 60, width - 60, height - 50
    d.line([(x0 + 40, 20), (x0 + 40, y0)], fill="#333333", width=4)  # chains
    d.line([(x1 - 40, 20), (x1 - 40, y0)], fill="#333333", width=4)
    d.rounded_rectangle([x0, y0, x1, y1], radius=14, fill="#1f4e3d", outline="#d8c27a", width=6)
    cx = (x0 + x1) // 2
    d.text((cx, y0 + 26), "BLUE HERON", fill="#f3e6b3", font=_font(36), anchor="mt")
    d.text((cx, y0 + 72), "BOOKS & COFFEE", fill="#f3e6b3", font=_font(22), anchor="mt")
    d.line([(x0 + 40, y0 + 110), (x1 - 40, y0 + 110)], fill="#d8c27a", width=2)
    d.text((cx, y0 + 124), "OPEN 9-17", fill="white", font=_font(30), anchor="mt")
    d.text((cx, y0 + 162), "closed on Mondays", fill="#f3e6b3", font=_font(18), anchor="mt")
    return img


DRAWERS = {"bar_chart.png": draw_bar_chart, "shop_sign.png": draw_shop_sign}


def write(out_dir: str | Path = HERE) -> list[Path]:
    """Draw every example into out_dir (each written to a temp file, then renamed into place)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, _ in EXAMPLES:
        img = DRAWERS[name]()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".png", dir=out)
        os.close(fd)
        try:
            img.save(tmp, format="PNG", optimize=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(out / name)
    return paths


def paths(out_dir: str | Path = HERE) -> list[tuple[Path, str]]:
    """(image path, question) for each example; draws any image that is missing."""
    out = Path(out_dir)
    if not all((out / name).is_file() for name, _ in EXAMPLES):
        write(out)
    return [(out / name, q) for name, q in EXAMPLES]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for p in write(args[0] if args else HERE):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
