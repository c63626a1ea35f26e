"""An OpenAI server as the engine, started through `serve` (one at a time) or an existing endpoint: vLLM for
safetensors variants, llama.cpp for GGUF variants (serve's own rule for GGUF; no `auto` switching here, so
`bench-text` always means vLLM bf16 and the two engines are measured side by side in one run).

Requests go through `serve.client.stream_chat` (the project's one client) from a thread pool with
`concurrency` workers, streaming, greedy, with the output length forced (`ignore_eos`, `min_tokens`).
"""
from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import memory
from bench.engines.base import Engine, error_from_log, one_line
from bench.metrics import RequestResult
from bench.workload import Request
from core import catalog
from core.errors import UserError


def normalize_endpoint(url: str) -> str:
    """'http://host:port', '.../v1' or '.../v1/' -> 'http://host:port/v1'."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        u = "http://" + u
    return u if u.endswith("/v1") else u + "/v1"


def _argv_int(argv: list[str], flag: str) -> int | None:
    return int(argv[argv.index(flag) + 1]) if flag in argv else None


_CORE_IDS = re.compile(r"core ids=\[([0-9, ]*)\]")


def worker_threads(log_text: str) -> int | None:
    """OpenMP threads of vLLM's CPU worker, from its thread-binding log lines ('core ids=[0, 1]')."""
    m = _CORE_IDS.findall(log_text or "")
    if not m:
        return None
    return len([x for x in m[-1].split(",") if x.strip()]) or None


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(self, alias: str, location: str, modality: str, endpoint: str | None = None,
                 api_key: str | None = None, server_args: tuple[str, ...] = (), force: bool = False,
                 start_timeout_s: float = 900, request_timeout_s: float = 600, threads: int | None = None,
                 cpu_int4: str | None = None):
        super().__init__(alias, location, modality)
        self.threads = threads
        self.cpu_int4 = cpu_int4
        self.endpoint = normalize_endpoint(endpoint) if endpoint else None
        self.api_key = api_key
        self.server_args = tuple(server_args)
        self.force = force
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.server = None
        self.base_url: str | None = None
        self.model: str | None = None
        self._pid: int | None = None

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if self.endpoint:
            self._connect()
        else:
            self._start()
        self.info["base_url"] = self.base_url
        self.info["served_model"] = self.model
        threads = worker_threads(self.log_text())
        if threads:
            self.info["threads"] = threads

    def _start(self) -> None:
        import serve
        from core.artifact import gguf_file, is_gguf

        name = self.alias if self.alias in catalog.VARIANTS else self.location
        t0 = time.perf_counter()
        if is_gguf(self.location):
            lp = serve.plan(name, "llamacpp", n_threads=self.threads)
            self.server = serve.launch(lp, timeout_s=self.start_timeout_s, progress=False)
            self.info.update(server="llama.cpp", gguf_file=gguf_file(Path(self.location)).name,
                             context=_argv_int(lp.argv, "--ctx-per-slot"), slots=_argv_int(lp.argv, "--parallel"))
            if self.threads:
                self.info["threads"] = self.threads
        else:
            from serve.args import cpu_int4

            lp = serve.plan(name, "vllm", extra_args=self.server_args, force=self.force, cpu_int4=self.cpu_int4)
            self.server = serve.launch(lp, timeout_s=self.start_timeout_s, progress=False)
            self.info.update(server="vLLM", cpu_int4=cpu_int4(lp.info, lp.hw, lp.opts.cpu_int4),
                             context=lp.opts.max_model_len or lp.info.max_model_len,
                             kv_cache_gib=int(lp.env.get("VLLM_CPU_KVCACHE_SPACE") or 0) or None)
        self.info.update(startup_s=time.perf_counter() - t0, started_by_bench=True, argv=list(self.server.argv),
                         log_path=str(self.server.log_path))
        self.base_url, self.model = self.server.base_url, self.server.model
        self.api_key = self.server.api_key or self.api_key
        self._pid = self.server.pid

    def _connect(self) -> None:
        from openai import OpenAI, OpenAIError

        try:
            names = [m.id for m in OpenAI(base_url=self.endpoint, api_key=self.api_key or "EMPTY",
                                          timeout=30, max_retries=1).models.list().data]
        except OpenAIError as e:
            raise UserError(f"cannot reach the endpoint {self.endpoint} ({one_line(e, 160)})",
                            "start a server with `python -m serve --model ALIAS`, or check --endpoint / --api-key") from None
        if self.alias in names:
            self.model = self.alias
        elif len(names) == 1:
            self.model = names[0]
        else:
            raise UserError(f"the endpoint {self.endpoint} serves {', '.join(names) or 'no model'}, not {self.alias}",
                            "pass ALIAS=URL pairs to --endpoint, one per model")
        self.base_url = self.endpoint
        self._pid = memory.pid_listening_on(self.endpoint)
        self.info.update(started_by_bench=False, server_pid_found=self._pid is not None)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    # ------------------------------------------------------------ requests

    def _messages(self, req: Request) -> list[dict]:
        from serve.client import image_part, user_message

        if req.image is None:
            return [user_message(req.text)]
        try:
            return [user_message(req.text, images=[req.image])]
        except TypeError:  # a client that wants parts: build the image part ourselves
            return [{"role": "user", "content": [image_part(req.image), {"type": "text", "text": req.text}]}]

    def request(self, req: Request) -> RequestResult:
        from serve.client import stream_chat

        start = time.perf_counter()
        try:
            stats = None
            for ev in stream_chat(self.base_url, self.model, self._messages(req), api_key=self.api_key,
                                  max_tokens=req.output_len, temperature=0.0, ignore_eos=True,
                                  min_tokens=req.output_len, timeout=self.request_timeout_s):
                if ev.done:
                    stats = ev.stats
            if stats is None:
                return RequestResult(False, start_s=start, error="the stream ended without a final event")
            return RequestResult(True, ttft_s=stats.ttft_s, latency_s=stats.total_s,
                                 output_tokens=int(stats.output_tokens or 0),
                                 prompt_tokens=int(stats.prompt_tokens or 0),
                                 itl_s=list(stats.itl_s or []), start_s=start, finish_reason=stats.finish_reason)
        except Exception as e:  # noqa: BLE001 - a failed request is data, recorded with its reason
            if self.debug and not isinstance(e, UserError):
                traceback.print_exc()
            msg = e.line() if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            return RequestResult(False, start_s=start, latency_s=time.perf_counter() - start, error=one_line(msg))

    def run(self, requests: list[Request], concurrency: int,
            on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
        results: list[RequestResult | None] = [None] * len(requests)

        def one(i: int) -> None:
            r = self.request(requests[i])
            results[i] = r
            if on_done:
                on_done(r)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="bench-req") as pool:
            list(pool.map(one, range(len(requests))))
        return [r for r in results if r is not None], time.perf_counter() - t0

    def answer(self, prompt: str, max_tokens: int) -> str:
        from serve.client import chat, user_message

        text, _ = chat(self.base_url, self.model, [user_message(prompt)], api_key=self.api_key,
                       max_tokens=max_tokens, temperature=0.0, timeout=self.request_timeout_s)
        return text

    # ------------------------------------------------------------ measurements

    def rss_bytes(self) -> int | None:
        if self.server is not None:
            return self.server.tree_rss_bytes()
        if self._pid:
            return memory.tree_rss_bytes(self._pid)
        return None

    def log_text(self) -> str:
        p = self.info.get("log_path")
        if not p:
            return ""
        try:
            return Path(p).read_text(errors="replace")
        except OSError:
            return ""

    def weights_gib_logged(self) -> float | None:
        return memory.vllm_weights_gib(self.log_text())

    def alive(self) -> bool:
        if self.server is not None:
            return self.server.alive()
        return True

    def failure_reason(self) -> str | None:
        """Why every request failed, from the server's log (its engine may die while the API stays up)."""
        if self.server is None:
            return None
        tail = self.server.log_tail(200)
        alive = self.server.alive()
        cause, _ = self.server.failure()
        err = error_from_log("\n".join(tail))
        if alive and cause == "unknown cause" and not err:
            return None
        what = self.info.get("server", "vLLM")
        state = f"the {what} server failed" if alive else f"the {what} server died"
        detail = f" ({err})" if err and err not in cause else ""
        return one_line(f"{state}: {cause}{detail}; log: {self.server.log_path}")
