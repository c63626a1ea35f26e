"""`python -m bench.soak`: a bounded load of mixed requests against one served variant, with its memory watched.

    python -m bench.soak --model tiny-vl-gguf --requests 200 --concurrency 4 --out reports/soak

The mix, request i of N (deterministic): text, one picture or two pictures (1/3, 1/2, 1/6 of a VL model's requests;
text only for a text model); streamed (even i) or not (odd i); every CANCEL_EVERY-th streamed request is cancelled
by the client after its first text chunk (the stream is closed, so the server aborts it). Output lengths vary, a
quarter of the requests force theirs (`ignore_eos`) and must get exactly that many tokens. A request fails when it
raises, comes back empty, or misses its forced length; a cancelled one fails only if it raises before its first
chunk. After a warm-up (every request shape once), the server tree's RSS is sampled through the run: "flat" means
it grew less than RSS_GROWTH_MAX between the end of the warm-up and the end of the run. Writes soak.json and
soak.md; exits 1 if any request failed or memory grew past the bound.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import UserError, run_cli

CANCEL_EVERY = 5  # of the streamed requests
RSS_GROWTH_MAX = 192 * 2**20  # tests/e2e/test_soak.py's bound, and why
REQUEST_TIMEOUT_S = 300.0
PROMPTS = ("Describe the picture in one sentence.", "What colour is this?", "Explain: Return the absolute value.",
           "Write a short note about lists.", "Count from one to ten.", "What shapes do you see?")
COLOURS = ((220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 240, 0), (0, 0, 0), (255, 255, 255))
SIZES = ((96, 64), (64, 64), (448, 448), (160, 128), (1024, 768), (48, 80))  # two larger than a tiny budget


@dataclass
class Result:
    i: int
    kind: str  # text | image | image x2
    mode: str  # stream | plain | cancel
    ok: bool
    latency_s: float
    tokens: int = 0
    error: str = ""


def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", SIZES[i % len(SIZES)], COLOURS[i % len(COLOURS)]).save(buf, format="PNG")
    return buf.getvalue()


def request(i: int, vl: bool) -> dict:
    """Request i of the mix: kind, mode, messages, max_tokens, ignore_eos."""
    from serve.client import user_message

    slot = i % 6
    images = [] if not vl or slot in (0, 3) else ([_png(i), _png(i + 3)] if slot == 5 else [_png(i)])
    kind = {0: "text", 1: "image", 2: "image x2"}[len(images)]
    mode = "plain" if i % 2 else ("cancel" if (i // 2) % CANCEL_EVERY == CANCEL_EVERY - 1 else "stream")
    return {"kind": kind, "mode": mode, "messages": [user_message(PROMPTS[i % len(PROMPTS)], images)],
            "max_tokens": 8 + (i * 7) % 41, "ignore_eos": i % 4 == 0}


def one(base_url: str, model: str, api_key: str | None, i: int, vl: bool) -> Result:
    from serve.client import make_client, stream_chat

    q = request(i, vl)
    r = Result(i, q["kind"], q["mode"], False, 0.0)
    t0 = time.perf_counter()
    try:
        if q["mode"] == "plain":
            with make_client(base_url, api_key, REQUEST_TIMEOUT_S) as cl:
                out = cl.chat.completions.create(model=model, messages=q["messages"], max_tokens=q["max_tokens"],
                                                 temperature=0.0,
                                                 extra_body={"ignore_eos": True} if q["ignore_eos"] else None)
            r.tokens = int(out.usage.completion_tokens) if out.usage else 0
            r.ok = bool(out.choices) and r.tokens > 0
        else:
            stats = None
            for ev in stream_chat(base_url, model, q["messages"], api_key=api_key, max_tokens=q["max_tokens"],
                                  ignore_eos=q["ignore_eos"], timeout=REQUEST_TIMEOUT_S):
                if q["mode"] == "cancel" and ev.delta:
                    r.tokens, r.ok = 1, True  # closing the stream here aborts the request on the server
                    break
                stats = ev.stats if ev.done else stats
            if q["mode"] == "stream":
                r.tokens = int(stats.output_tokens) if stats else 0
                r.ok = stats is not None and r.tokens > 0
            elif not r.ok:  # the whole answer came without text before it ended: nothing to cancel, still fine
                r.ok, r.tokens = stats is not None, int(stats.output_tokens) if stats else 0
        if r.ok and q["ignore_eos"] and q["mode"] != "cancel" and r.tokens != q["max_tokens"]:
            r.ok, r.error = False, f"forced length {q['max_tokens']}, got {r.tokens} tokens"
        if not r.ok and not r.error:
            r.error = "empty answer"
    except UserError as e:
        r.error = e.line()
    except Exception as e:  # noqa: BLE001 - a failed request is data
        r.error = f"{type(e).__name__}: {e}"[:300]
    r.latency_s = time.perf_counter() - t0
    return r


def load(base_url: str, model: str, api_key: str | None, indices, concurrency: int, vl: bool,
         on_done=None) -> list[Result]:
    def run(i):
        res = one(base_url, model, api_key, i, vl)
        if on_done:
            on_done(res)
        return res

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="soak") as pool:
        return list(pool.map(run, indices))


def soak(srv, requests: int, concurrency: int, vl: bool) -> dict:
    """Warm-up, then `requests` at `concurrency` against a running serve.process.Server; the summary dict."""
    warm = load(srv.base_url, srv.model, srv.api_key, range(-12, 0), concurrency, vl)
    rss_first = srv.tree_rss_bytes()
    samples = [rss_first]
    step = max(1, requests // 20)
    done = [0]

    def tick(_):
        done[0] += 1
        if done[0] % step == 0:
            samples.append(srv.tree_rss_bytes())

    t0 = time.monotonic()
    results = load(srv.base_url, srv.model, srv.api_key, range(requests), concurrency, vl, on_done=tick)
    duration = time.monotonic() - t0
    rss_last = srv.tree_rss_bytes()
    after = one(srv.base_url, srv.model, srv.api_key, 1, vl)  # still answering after the cancellations
    lat = sorted(r.latency_s for r in results if r.ok and r.mode != "cancel")
    failed = [r for r in results if not r.ok] + [r for r in warm if not r.ok] + ([after] if not after.ok else [])
    count = lambda key: {v: sum(getattr(r, key) == v for r in results) for v in dict.fromkeys(getattr(r, key)
                                                                                             for r in results)}
    return {"model": srv.model, "requests": requests, "concurrency": concurrency, "duration_s": duration,
            "failed": len(failed), "errors": [f"#{r.i} {r.kind} {r.mode}: {r.error}" for r in failed[:10]],
            "kinds": count("kind"), "modes": count("mode"),
            "output_tokens": sum(r.tokens for r in results), "output_tok_s": sum(r.tokens for r in results) / duration,
            "latency_s": {"p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
                          "max": lat[-1]} if lat else {},
            "rss_bytes": {"after_warmup": rss_first, "end": rss_last, "growth": rss_last - rss_first,
                          "bound": RSS_GROWTH_MAX, "samples": samples},
            "memory_flat": rss_last - rss_first < RSS_GROWTH_MAX, "answers_after": after.ok,
            "results": [asdict(r) for r in results]}


def markdown(s: dict, command: str, engine_line: str) -> str:
    mib = lambda b: f"{b / 2**20:,.0f} MiB"
    r = s["rss_bytes"]
    lat = s["latency_s"]
    return "\n".join([
        f"# Soak: {s['model']}, {s['requests']} requests at concurrency {s['concurrency']}", "",
        f"`{command}`", "", f"- server: {engine_line}",
        (f"- requests: {', '.join(f'{v} {k}' for k, v in s['kinds'].items())}; "
         f"{', '.join(f'{v} {k}' for k, v in s['modes'].items())} (cancel: closed after the first text chunk)"),
        f"- **failed: {s['failed']}**" + (f" ({'; '.join(s['errors'])})" if s["errors"] else ""),
        f"- {s['duration_s']:.1f} s, {s['output_tokens']} output tokens, {s['output_tok_s']:.1f} tok/s in aggregate",
        (f"- latency of completed requests: p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s, max {lat['max']:.2f} s"
         if lat else "- no completed request"),
        (f"- server tree RSS: {mib(r['after_warmup'])} after the warm-up, {mib(r['end'])} at the end "
         f"(growth {(r['growth']) / 2**20:+.1f} MiB, bound {mib(r['bound'])}: "
         f"{'flat' if s['memory_flat'] else 'GREW'}); samples {' '.join(mib(x) for x in r['samples'])}"),
        f"- a request after the run: {'answered' if s['answers_after'] else 'FAILED'}", ""])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="alias, folder or .gguf")
    p.add_argument("--engine", default="auto", help="serve's --engine (auto|vllm|llamacpp)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    p.add_argument("--out", required=True, help="folder for soak.json and soak.md")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        raise UserError("--requests and --concurrency must be at least 1")
    import serve
    from core.artifact import inspect

    lp = serve.plan(args.model, args.engine, n_threads=args.threads, parallel=args.concurrency)
    folder = Path(lp.info.file).parent if lp.engine == "llamacpp" else Path(lp.info.location)
    vl = folder.is_dir() and "vision_config" in inspect(folder).config
    with serve.launch(lp, progress=False) as srv:
        s = soak(srv, args.requests, args.concurrency, vl)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    s.update(command=command, engine=lp.engine, argv=lp.argv, reason=lp.reason, notes=lp.notes)
    (out / "soak.json").write_text(json.dumps(s, indent=1))
    (out / "soak.md").write_text(markdown(s, command, f"{lp.engine} ({lp.notes[0] if lp.notes else lp.reason})"))
    print(markdown(s, command, lp.engine))
    return 0 if s["failed"] == 0 and s["memory_flat"] and s["answers_after"] else 1


if __name__ == "__main__":
    run_cli(main)
