"""serve.client's image budget: a picture over `max_pixels` is resized as the model's processor would and sent as
PNG (for llama.cpp's server, which has no budget of its own); smaller pictures keep their bytes."""
from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

from PIL import Image

from serve.client import image_part, user_message

REPO = Path(__file__).resolve().parents[2]


def _sent(part: dict) -> tuple[str, Image.Image]:
    url = part["image_url"]["url"]
    head, b64 = url.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(b64)))


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 40)).save(buf, "JPEG")
    return buf.getvalue()


def test_large_pictures_are_resized_to_the_budget(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(1600, 1200))
    for src in (big, str(big), big.read_bytes(), Image.open(big)):
        head, img = _sent(image_part(src, max_pixels=256 * 256))
        assert head == "data:image/png;base64" and img.size == (288, 192)  # multiples of 32, floored under the budget
        assert img.size[0] * img.size[1] <= 256 * 256
    head, img = _sent(image_part(big))  # no budget: the file's own bytes
    assert head == "data:image/jpeg;base64" and img.size == (1600, 1200)


def test_small_pictures_keep_their_bytes(tmp_path):
    small = tmp_path / "small.jpg"
    small.write_bytes(_jpeg(200, 100))
    part = image_part(small, max_pixels=256 * 256)
    assert part["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(small.read_bytes()).decode()
    msg = user_message("hi", [small, small.read_bytes()], max_pixels=64 * 64)
    assert [_sent(p)[1].size for p in msg["content"][:2]] == [(64, 32), (64, 32)] and msg["content"][2]["text"] == "hi"


def test_chat_cli_refuses_a_budget_below_one_token():
    r = subprocess.run([sys.executable, "-m", "serve.chat", "--max-image-pixels", "100", "hello"], cwd=REPO,
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --max-image-pixels 100 is below one image token")
    assert "Traceback" not in r.stderr
