"""Bounded load on loopback through the real openai client (serve.client.stream_chat in threads).

Target: the tiny VL GPTQ variant (tiny-vl-gptq) where this machine's vLLM can serve W4A16
(`core.hardware.detect().w4a16_serving`); where it cannot (vLLM CPU built for AVX2 only lacks the int4 kernel),
the same load runs against tiny-vl (bf16), and the test says so in its output.

- `test_soak`: mixed text and image chats; 0 failed requests; the server tree's RSS after a warm-up vs at the end.
  Default suite: ~60 requests at concurrency 8. `QWEN_W4_SOAK=full` (`make soak`, which runs `-m soak`): at least
  500 requests at concurrency 16, and only then does the test carry the `soak` marker.
- `test_server_killed_mid_run_then_restarted`: SIGKILL to the vLLM process tree while answers stream: in-flight
  and new requests fail with one-line UserErrors within bounded time; `serve.start` on the same port brings it
  back and requests succeed again. Starts and stops its own server.

Every loop is bounded in count and time.
"""
from __future__ import annotations

import io
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import psutil
import pytest

from core.errors import UserError
from core.hardware import detect

FULL = os.environ.get("QWEN_W4_SOAK", "").strip().lower() == "full"
W4_OK, W4_WHY = detect().w4a16_serving
ALIAS = "tiny-vl-gptq" if W4_OK else "tiny-vl"
TARGET_NOTE = (f"target {ALIAS} (W4A16 GPTQ)" if W4_OK else
               f"target {ALIAS} (bf16): this machine's vLLM cannot serve W4A16 ({W4_WHY})")
REQUESTS, CONCURRENCY = (500, 16) if FULL else (60, 8)
RUN_DEADLINE_S = 1800 if FULL else 600  # the whole load phase; requests not started by then count as failed
REQUEST_TIMEOUT_S = 120.0
# The kill test's answers are long (7000 tokens in an 8192 context) so that some are still generating at the kill.
KILL_CONTEXT, LONG_TOKENS, KILL_AFTER_S = 8192, 7000, 1.0
START_TIMEOUT_S = 600
# RSS growth allowed between the end of the warm-up and the end of the run. vLLM allocates its KV cache
# (VLLM_CPU_KVCACHE_SPACE) and loads the weights before it reports healthy, and the warm-up sends every distinct
# image and request shape once, so steady serving should not grow; what remains is allocator and Python heap
# noise, measured at a few MiB to a few tens of MiB on a ~3 GB tree. 192 MiB is far above that noise yet below
# what a leak of the request data would add over the run (e.g. 0.4 MiB kept per request is 200 MiB at 500).
RSS_GROWTH_MAX = 192 * 2**20

pytestmark = pytest.mark.e2e
soak_if_full = pytest.mark.soak if FULL else (lambda f: f)

PROMPTS = [
    "Describe the picture in one sentence.",
    "What colour is this?",
    "Explain: Return the absolute value.",
    "Write a short note about lists.",
    "Count from one to ten.",
    "What shapes do you see?",
]


def _png(color, size) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [_png(c, s) for c, s in [((220, 30, 30), (96, 64)), ((30, 200, 40), (64, 64)), ((20, 40, 230), (128, 96)),
                                  ((240, 240, 0), (160, 128)), ((0, 0, 0), (224, 224)), ((255, 255, 255), (48, 80)),
                                  ((128, 0, 128), (200, 120)), ((0, 128, 128), (112, 176))]]


def _request(i: int) -> tuple[str, list[dict], int, bool]:
    """Request i of the mix: (kind, messages, max_tokens, ignore_eos). 1/3 text, 1/2 one image, 1/6 two images."""
    from serve.client import user_message

    prompt = PROMPTS[i % len(PROMPTS)]
    slot = i % 6
    if slot in (0, 3):
        kind, images = "text", []
    elif slot == 5:
        kind, images = "image x2", [IMAGES[i % 8], IMAGES[(i + 3) % 8]]
    else:
        kind, images = "image", [IMAGES[i % 8]]
    return kind, [user_message(prompt, images)], 8 + (i * 7) % 41, i % 4 == 0


@dataclass
class Result:
    i: int
    kind: str
    ok: bool
    latency_s: float
    tokens: int = 0
    error: str = ""


def _one(base_url: str, model: str, api_key: str | None, i: int, deadline: float) -> Result:
    from serve.client import stream_chat

    kind, messages, max_tokens, ignore_eos = _request(i)
    if time.monotonic() > deadline:
        return Result(i, kind, False, 0.0, error="not started: the run's deadline passed")
    t0 = time.perf_counter()
    try:
        last = None
        for ev in stream_chat(base_url, model, messages, api_key=api_key, max_tokens=max_tokens,
                              ignore_eos=ignore_eos, timeout=REQUEST_TIMEOUT_S):
            last = ev
        ok = bool(last and last.done and last.stats and last.stats.output_tokens > 0)
        if ignore_eos and ok:
            ok = last.stats.output_tokens == max_tokens
        return Result(i, kind, ok, time.perf_counter() - t0, last.stats.output_tokens if last and last.stats else 0,
                      "" if ok else f"bad answer: {last!r}"[:300])
    except UserError as e:
        return Result(i, kind, False, time.perf_counter() - t0, error=e.line())
    except Exception as e:  # noqa: BLE001 - recorded, then the assertion shows it
        return Result(i, kind, False, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"[:300])


def _load(srv, indices, concurrency: int, deadline: float, on_done=None) -> list[Result]:
    results = []
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="soak") as pool:
        futs = [pool.submit(_one, srv.base_url, srv.model, srv.api_key, i, deadline) for i in indices]
        for f in as_completed(futs, timeout=max(1.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_S + 30):
            results.append(f.result())
            if on_done:
                on_done(len(results))
    return sorted(results, key=lambda r: r.i)


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def _mib(b: int) -> str:
    return f"{b / 2**20:.0f} MiB"


@soak_if_full
def test_soak(server, artifact):
    artifact(ALIAS)
    srv = server(ALIAS)
    print(f"\n[soak] {TARGET_NOTE}; {REQUESTS} requests at concurrency {CONCURRENCY} "
          f"({'full' if FULL else 'short'} run)")
    # warm-up: every image and request shape once, at the run's concurrency
    warm = _load(srv, range(-2 * CONCURRENCY, 0), CONCURRENCY, time.monotonic() + 300)
    assert all(r.ok for r in warm), [r.error for r in warm if not r.ok][:5]
    rss_first = srv.tree_rss_bytes()
    samples = [rss_first]
    step = max(1, REQUESTS // 10)

    def sample(n):
        if n % step == 0:
            samples.append(srv.tree_rss_bytes())

    t0 = time.monotonic()
    results = _load(srv, range(REQUESTS), CONCURRENCY, t0 + RUN_DEADLINE_S, on_done=sample)
    duration = time.monotonic() - t0
    rss_last = srv.tree_rss_bytes()
    failed = [r for r in results if not r.ok]
    lat = [r.latency_s for r in results if r.ok]
    kinds = {k: sum(r.kind == k for r in results) for k in ("text", "image", "image x2")}
    print(f"[soak] {len(results)} requests ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
          f"concurrency {CONCURRENCY}, {len(failed)} failed, {duration:.1f} s, "
          f"{sum(r.tokens for r in results) / duration:.1f} output tokens/s")
    if lat:
        print(f"[soak] latency p50 {statistics.median(lat):.2f} s, p99 {_pct(lat, 0.99):.2f} s, "
              f"max {max(lat):.2f} s")
    print(f"[soak] server tree RSS first {_mib(rss_first)}, last {_mib(rss_last)} "
          f"(growth {(rss_last - rss_first) / 2**20:+.1f} MiB, bound {_mib(RSS_GROWTH_MAX)}); "
          f"samples: {' '.join(_mib(s) for s in samples)}")
    assert len(results) == REQUESTS
    assert not failed, f"{len(failed)} failed: " + "; ".join(f"#{r.i} {r.kind}: {r.error}" for r in failed[:5])
    assert srv.alive()
    assert rss_last - rss_first < RSS_GROWTH_MAX


# ---------------------------------------------------------------- a crash mid-run, and recovery

def _long_stream(base_url, model, api_key, started: threading.Event, out: list, idx: int):
    """A long answer (ignore_eos) that is still streaming when the server dies; records how it ended."""
    from serve.client import stream_chat, user_message

    t0 = time.perf_counter()
    try:
        # special tokens shown as text: more of a random tiny model's answer reaches the client as it streams
        for ev in stream_chat(base_url, model, [user_message("Tell me a long story.", [IMAGES[idx % 8]])],
                              api_key=api_key, max_tokens=LONG_TOKENS, ignore_eos=True, timeout=30.0,
                              extra_body={"skip_special_tokens": False}):
            if ev.delta:
                started.set()
        out.append(("finished", time.perf_counter() - t0, ""))
    except UserError as e:
        out.append(("UserError", time.perf_counter() - t0, e.line()))
    except BaseException as e:  # noqa: BLE001 - anything else is a failure of the client's contract
        out.append((type(e).__name__, time.perf_counter() - t0, str(e)))


def _assert_clean(line: str) -> None:
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, line


@soak_if_full
def test_server_killed_mid_run_then_restarted(artifact):
    from serve import start
    from serve.client import chat, user_message
    from serve.process import free_port

    artifact(ALIAS)
    port = free_port()
    inflight_n = 6 if FULL else 3
    after_n = 40 if FULL else 12
    print(f"\n[kill] {TARGET_NOTE}; port {port}")
    srv = start(ALIAS, "vllm", port=port, timeout_s=START_TIMEOUT_S, progress=False, max_model_len=KILL_CONTEXT)
    srv2 = None
    try:
        before = _load(srv, range(inflight_n * 2), inflight_n, time.monotonic() + 300)
        assert all(r.ok for r in before), [r.error for r in before if not r.ok]

        # answers streaming when the whole tree gets SIGKILL (a crash, the OOM killer)
        events = [threading.Event() for _ in range(inflight_n)]
        ends: list = []
        threads = [threading.Thread(target=_long_stream, args=(srv.base_url, srv.model, srv.api_key, ev, ends, k),
                                    daemon=True) for k, ev in enumerate(events)]
        for t in threads:
            t.start()
        # kill KILL_AFTER_S after they were sent: no 7000-token answer is done by then (this CPU: at most ~2500
        # tokens/s per answer). Not "at the first text": a random tiny model's bytes often are not UTF-8 and vLLM
        # holds such text back, sometimes to the end. Answers the server finished anyway end normally (a tiny
        # model generates faster than busy Python clients read: seen all processes dead, answers completing 20 s
        # later from the clients' socket buffers); every other one must end with one clean line.
        time.sleep(KILL_AFTER_S)
        streaming = sum(ev.is_set() for ev in events)
        tree = srv.processes()
        assert len(tree) >= 2, tree  # the API server and its engine
        t_kill = time.monotonic()
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for t in threads:
            t.join(timeout=max(0.1, 60 - (time.monotonic() - t_kill)))
        assert not any(t.is_alive() for t in threads), "a client hung after the server died"
        print(f"[kill] {streaming} of {inflight_n} answers had shown text when killed; in-flight ends: "
              + "; ".join(f"{kind} after {s:.1f} s: {msg}" for kind, s, msg in ends))
        assert len(ends) == inflight_n
        for kind, _, msg in ends:
            assert kind in ("UserError", "finished"), (kind, msg)
            if kind == "UserError":
                _assert_clean(msg)
        # Not asserted: that at least one answer was cut. Under the full suite on 2 cores every answer has been seen
        # to complete from the clients' socket buffers after the whole tree was dead (NOTES.md, session 2); a
        # deterministic cut is tested against a scripted loopback server (tests/unit/test_client_stream.py).
        print(f"[kill] cut mid-answer: {sum('mid-answer' in msg for _, _, msg in ends)} of {inflight_n}")

        # new requests while it is down: refused at once, one line
        for k in range(3):
            t0 = time.monotonic()
            with pytest.raises(UserError) as e:
                chat(srv.base_url, srv.model, [user_message("hello")], api_key=srv.api_key, max_tokens=8, timeout=10)
            _assert_clean(e.value.line())
            assert "cannot connect" in e.value.line() and time.monotonic() - t0 < 15
        print(f"[kill] new request while down: {e.value.line()}")
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        assert not srv.alive()
        srv.stop()  # reaps the leader; idempotent on a dead tree

        # restart on the same port: the same client settings work again
        t0 = time.monotonic()
        srv2 = start(ALIAS, "vllm", port=port, timeout_s=START_TIMEOUT_S, progress=False)
        print(f"[kill] restarted in {time.monotonic() - t0:.0f} s (pid {srv2.pid})")
        assert srv2.base_url == srv.base_url
        after = _load(srv2, range(after_n), min(CONCURRENCY, 8), time.monotonic() + 300)
        assert all(r.ok for r in after), [r.error for r in after if not r.ok]
        print(f"[kill] {after_n} requests after the restart: all answered")
    finally:
        srv.stop()
        if srv2 is not None:
            srv2.stop()
            assert not srv2.processes() or all(p.status() == psutil.STATUS_ZOMBIE for p in srv2.processes())
