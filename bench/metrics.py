"""Serving metrics, named and defined as `vllm bench serve` defines them.

Per request (streaming): TTFT = time from sending to the first output token; E2EL = time from
sending to the last token; TPOT = (E2EL - TTFT) / (output tokens - 1), only for requests with more
than one output token; ITL = the gaps between successive streamed chunks (pooled over all requests).
Per run: request throughput = completed / duration, output throughput = output tokens / duration,
total token throughput = (input + output tokens) / duration. Percentiles interpolate linearly
between order statistics (numpy's default, as vLLM uses). Times are reported in milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PERCENTILES = (50, 99)


@dataclass
class RequestResult:
    """One benchmark request as the client saw it (seconds)."""

    ok: bool
    ttft_s: float | None = None
    latency_s: float | None = None  # end-to-end
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    start_s: float = 0.0  # perf_counter at send, for timelines
    error: str = ""
    finish_reason: str | None = None  # the server's: "length" when the forced length was reached

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.latency_s, self.ttft_s, self.output_tokens)

    def as_dict(self) -> dict:
        return asdict(self)


def tpot(latency_s: float | None, ttft_s: float | None, output_tokens: int) -> float | None:
    """Time per output token excluding the first: (E2EL - TTFT) / (n - 1); None when n <= 1."""
    if latency_s is None or ttft_s is None or output_tokens <= 1:
        return None
    return (latency_s - ttft_s) / (output_tokens - 1)


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile with linear interpolation between closest ranks (numpy.percentile's default)."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside [0, 100]")
    xs = sorted(values)
    rank = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    if lo == hi:
        return float(xs[lo])
    return float(xs[lo] + (xs[hi] - xs[lo]) * (rank - lo))


def mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def std(values: list[float]) -> float | None:
    if not values:
        return None
    m = sum(values) / len(values)
    return float(math.sqrt(sum((v - m) ** 2 for v in values) / len(values)))  # population, like np.std


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1000.0


def distribution_ms(values_s: list[float], name: str, percentiles=PERCENTILES) -> dict:
    """mean/median/std/pNN of a list of seconds, in ms, keyed like vLLM's result JSON (mean_ttft_ms, ...)."""
    out = {
        f"mean_{name}_ms": _ms(mean(values_s)),
        f"median_{name}_ms": _ms(percentile(values_s, 50)),
        f"std_{name}_ms": _ms(std(values_s)),
    }
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = _ms(percentile(values_s, p))
    return out


def summarize(results: list[RequestResult], duration_s: float, percentiles=PERCENTILES) -> dict:
    """Aggregate one run (one concurrency level) the way `vllm bench serve` does."""
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpots = [t for t in (r.tpot_s for r in ok) if t is not None]
    itls = [x for r in ok for x in r.itl_s]
    e2els = [r.latency_s for r in ok if r.latency_s is not None]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    dur = duration_s if duration_s and duration_s > 0 else float("nan")
    out = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration_s,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur if ok else 0.0,
        "output_throughput": total_out / dur if ok else 0.0,
        "total_token_throughput": (total_in + total_out) / dur if ok else 0.0,
    }
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        out.update(distribution_ms(vals, name, percentiles))
    # decode speed of one stream: what a user watching one answer sees (1 / mean TPOT)
    out["decode_tok_s_per_stream"] = (1000.0 / out["mean_tpot_ms"]) if out["mean_tpot_ms"] else None
    # answers a server ended before the forced length (one that ignores `ignore_eos`, e.g. an external endpoint):
    # counted, and their per-token times use the tokens they produced
    out["ended_early"] = sum(1 for r in ok if r.finish_reason not in (None, "length"))
    errors = sorted({r.error for r in results if not r.ok and r.error})
    if errors:
        out["errors"] = errors[:5]
    return out


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value / baseline
