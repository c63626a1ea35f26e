"""Engines the benchmark drives: vLLM's OpenAI server (through `serve`) or transformers in process.

An engine serves one variant at a time: `open()` (start or connect; raises on failure),
`run(requests, concurrency, on_done)` -> (results, duration_s), `answer(prompt, max_tokens)` (greedy,
for the quality table), `rss_bytes()` (resident memory of what serves the model), `info` (how it
ran: argv, backend, compile, start-up seconds ...), `failure_reason()` (one line, when it died),
`close()`.
"""
from __future__ import annotations

from bench.engines.base import Engine, VariantFailed, error_from_log, one_line

__all__ = ["ENGINES", "Engine", "VariantFailed", "error_from_log", "make", "one_line"]

ENGINES = ("vllm", "transformers")


def make(kind: str, alias: str, location: str, modality: str, **kw) -> Engine:
    if kind == "vllm":
        from bench.engines.vllm_engine import VllmEngine

        return VllmEngine(alias, location, modality, **kw)
    if kind == "transformers":
        from bench.engines.transformers_engine import TransformersEngine

        return TransformersEngine(alias, location, modality, **kw)
    raise ValueError(kind)
