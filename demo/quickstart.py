"""`make run`: the whole chain on the embedded tiny default, offline, in a few minutes.

1. build the tiny Qwen3-VL model (core.tiny), 2. quantize it to W4A16 with AutoRound (autoround, gptq, awq),
3. serve a variant (serve.start: vLLM's OpenAI server, or llama.cpp's where `--engine auto` picks it), 4. send one image chat through the openai client,
5. print the answer and its speed, 6. stop the server.

On a CPU without vLLM's W4A16 kernel (no AVX-512, no GPU) step 3 serves the 16-bit tiny model instead and
says why; the W4A16 artifacts are still made, linted and verified in step 2.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from core import catalog
from core.cli import add_common
from core.errors import run_cli
from core.hardware import detect
from serve.engine import ENGINES

BASE = "tiny-vl"
FORMATS = ["autoround", "gptq", "awq"]
QUESTION = "What does this picture show?"


def _step(n: int, text: str) -> None:
    print(f"\n== {n}. {text}", flush=True)


def _example_image():
    ex = Path(__file__).resolve().parent / "examples"
    for p in sorted(ex.glob("*.png")) if ex.is_dir() else []:
        return p
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 160), "white")
    d = ImageDraw.Draw(img)
    for i, h in enumerate((40, 90, 130, 70)):
        d.rectangle([20 + i * 55, 150 - h, 60 + i * 55, 150], fill=("#4477aa", "#ee6677", "#228833", "#ccbb44")[i])
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fresh", action="store_true", help="re-quantize even if the artifacts exist")
    p.add_argument("--recipe", default="light", help="quantize recipe (default: light)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--engine", choices=ENGINES, default="auto", help="as `python -m serve --engine` (default auto)")
    add_common(p)
    args = p.parse_args(argv)
    if args.doctor:
        import serve

        return serve.doctor()
    t_all = time.time()
    hw = detect()

    _step(1, f"build the tiny Qwen3-VL model ({BASE})")
    t = time.time()
    base = catalog.resolve(BASE)
    print(f"{BASE}: {base.path} ({time.time() - t:.1f} s)")

    _step(2, f"quantize {BASE} to W4A16 (symmetric, group 128) with AutoRound: {', '.join(FORMATS)}")
    try:
        from quantize.api import quantize
    except ImportError as e:
        print(f"quantize is not available yet ({e}); skipping")
        quantize = None
    if quantize is not None:
        todo = [f for f in FORMATS if args.fresh or catalog.local_path(catalog.quantized_alias(BASE, f)) is None]
        if todo:
            t = time.time()
            quantize(BASE, todo, recipe=args.recipe)
            print(f"quantized {', '.join(todo)} in {time.time() - t:.1f} s")
        for f in FORMATS:
            alias = catalog.quantized_alias(BASE, f)
            print(f"  {alias:<20} {catalog.local_path(alias) or 'missing'}")

    _step(3, "serve it with an OpenAI-compatible server")
    ok, why = hw.w4a16_serving
    alias = catalog.quantized_alias(BASE, "gptq") if ok and catalog.local_path(
        catalog.quantized_alias(BASE, "gptq")) else BASE
    if alias == BASE:
        print(f"serving the 16-bit {BASE}: W4A16 cannot be served by vLLM on this machine ({why})" if not ok
              else f"serving the 16-bit {BASE}")
    import serve
    from serve.client import chat, image_part, user_message

    t = time.time()
    lp = serve.plan(alias, args.engine, hw=hw)
    print(f"engine: {lp.engine} — {lp.reason}")
    with serve.launch(lp) as srv:
        print(f"{alias} ready at {srv.base_url} in {time.time() - t:.0f} s (log: {srv.log_path})")

        _step(4, "one image chat through the openai client")
        img = _example_image()
        print(f"image: {img if isinstance(img, Path) else 'generated bar chart'}\nquestion: {QUESTION}")
        text, stats = chat(srv.base_url, srv.model, [user_message(QUESTION, [image_part(img)])],
                           api_key=srv.api_key, max_tokens=args.max_tokens)

        _step(5, "answer")
        print(text.strip())
        print(f"[{alias}: {stats.output_tokens} tokens, TTFT {stats.ttft_s * 1000:.0f} ms, "
              f"{stats.tokens_per_s:.1f} tok/s]")
        if alias == BASE or catalog.variant(BASE).family.local_only:
            print("(a tiny model, trained for minutes on synthetic pictures of shapes: it names colours and shapes, "
                  "often wrongly; the chain is what is shown)")
        _step(6, "stop the server")
    print(f"stopped. total {time.time() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
