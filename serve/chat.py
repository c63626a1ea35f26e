"""`python -m serve.chat`: one streamed chat turn with a running server, images included.

    python -m serve.chat --model tiny-vl --image cat.png "What is in the picture?"

The answer streams to stdout; time to first token and tokens/s go to stderr at the end.
Local images are sent as data URLs; http(s) images are downloaded here first.
"""
from __future__ import annotations

import argparse
import os
import sys

from core.cli import add_common
from core.errors import UserError, run_cli
from serve.args import API_KEY_ENV

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
BASE_URL_ENV = "QWEN_W4_BASE_URL"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serve.chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the user message ('-' or none: read stdin)")
    p.add_argument("--model", default=None, help="served model name (default: the one the server serves)")
    p.add_argument("--base-url", default=None,
                   help=f"server's OpenAI base URL (default: ${BASE_URL_ENV} or {DEFAULT_BASE_URL})")
    p.add_argument("--api-key", default=None, help=f"the server's API key (default: ${API_KEY_ENV})")
    p.add_argument("--image", action="append", default=[], metavar="PATH_OR_URL", help="attach an image (repeatable)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help="resize larger images here to at most N pixels, as the model's processor would (for "
                        "llama.cpp's server, which has no image budget; vLLM applies the processor's own)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens (benchmarking)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.doctor:
        from core.doctor import report
        return report()
    from serve.client import PIXELS_PER_TOKEN, stream_chat, user_message

    prompt = args.prompt
    if prompt in (None, "-"):
        if sys.stdin.isatty():
            raise UserError("no prompt given", 'pass it as the last argument: python -m serve.chat "Hello"')
        prompt = sys.stdin.read().strip()
    if not prompt:
        raise UserError("the prompt is empty", "pass some text")
    base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.max_image_pixels is not None and args.max_image_pixels < PIXELS_PER_TOKEN:
        raise UserError(f"--max-image-pixels {args.max_image_pixels} is below one image token ({PIXELS_PER_TOKEN} "
                        "pixels)",
                        "pass e.g. --max-image-pixels 1048576 (1 MP, 1024 image tokens)")
    messages.append(user_message(prompt, args.image, allow_urls=True, max_pixels=args.max_image_pixels))
    stats = None
    for ev in stream_chat(base_url, args.model, messages, api_key=api_key, max_tokens=args.max_tokens,
                          temperature=args.temperature, ignore_eos=args.ignore_eos, timeout=args.timeout):
        if ev.delta:
            sys.stdout.write(ev.delta)
            sys.stdout.flush()
        if ev.done:
            stats = ev.stats
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats:
        print(f"-- {stats.line()}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
