"""The report: report.json (every raw number), report.md (variant x metric tables, ratios to the 16-bit
baseline, roofline, quality, environment, the command to reproduce) and PNG plots.

Everything derived (ratios, roofline, headline) is computed here from the raw numbers in the JSON,
so a report can be re-rendered, and checked, from report.json alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from bench import served_quality
from bench.metrics import ratio
from bench.roofline import roofline
from core.artifact import atomic_folder

GB = 1e9


# ---------------------------------------------------------------- derived numbers

def baseline_of(report: dict, family: str | None = None) -> str | None:
    """The first 16-bit variant that ran (ratios are relative to it); with `family`, the first of that model family
    (a run of several families, e.g. bench-text and shape-text, compares each with its own 16-bit model)."""
    oks = [v for v in report.get("variants", []) if v.get("is_16bit") and v.get("status") == "ok"]
    same = [v for v in oks if family and v.get("family") == family]
    return (same or oks or [{"alias": None}])[0]["alias"]


def run_of(v: dict, scenario: str, c: int | str) -> dict | None:
    return (v.get("runs") or {}).get(scenario, {}).get(str(c))


def bandwidth_for(report: dict, v: dict) -> float | None:
    """The copy bandwidth with as many threads as the engine used (all cores when unknown)."""
    bw = report.get("bandwidth") or {}
    threads = (v.get("engine") or {}).get("threads") or (v.get("engine") or {}).get("torch_threads")
    by = bw.get("by_threads") or {}
    if threads and str(threads) in by:
        return by[str(threads)]
    return bw.get("gb_s")


def top_concurrency(report: dict) -> int:
    return max(report.get("settings", {}).get("concurrency") or [1])


def derive(report: dict) -> dict:
    """Headline rows (one per variant) with ratios to the baseline and the batch-1 roofline."""
    base_alias = baseline_of(report)
    variants = report.get("variants", [])
    by_alias = {v["alias"]: v for v in variants}
    top = top_concurrency(report)
    rows = []

    def metric(v, key):
        w = v.get("weights") or {}
        mem = v.get("memory") or {}
        disk = v.get("disk") or {}
        r1 = run_of(v, "text", 1) or {}
        rt = run_of(v, "text", top) or {}
        ri = run_of(v, "image", 1) or {}
        return {
            "weights_disk_bytes": disk.get("weights_bytes"),
            "bytes_per_token": w.get("bytes_per_token"),
            "rss_peak_bytes": mem.get("rss_peak_bytes"),
            "device_peak_bytes": mem.get("device_peak_bytes") or mem.get("gpu_used_peak_bytes"),
            "weights_loaded_bytes": (v.get("engine") or {}).get("weights_bytes_loaded"),
            "decode_tok_s_bs1": r1.get("decode_tok_s_per_stream"),
            "output_tok_s_bs1": r1.get("output_throughput"),
            "output_tok_s_top": rt.get("output_throughput"),
            "ttft_ms_bs1": r1.get("mean_ttft_ms"),
            "tpot_ms_bs1": r1.get("mean_tpot_ms"),
            "ttft_ms_image_bs1": ri.get("mean_ttft_ms"),
        }[key]

    keys = ("weights_disk_bytes", "bytes_per_token", "rss_peak_bytes", "device_peak_bytes", "weights_loaded_bytes",
            "decode_tok_s_bs1",
            "output_tok_s_bs1", "output_tok_s_top", "ttft_ms_bs1", "tpot_ms_bs1", "ttft_ms_image_bs1")
    for v in variants:
        eng = v.get("engine") or {}
        row = {"alias": v["alias"], "status": v.get("status"), "reason": v.get("reason"), "format": v.get("format"),
               "server": eng.get("server") or eng.get("engine"), "threads": eng.get("threads") or eng.get("torch_threads")}
        pred = v.get("predicted") or {}
        row["predicted_tok_s"] = pred.get("tok_s")  # bench/predict.py's, where the report has one for it
        if v.get("status") == "ok":
            for k in keys:
                row[k] = metric(v, k)
            row["roofline"] = roofline(row["bytes_per_token"], row["decode_tok_s_bs1"], bandwidth_for(report, v))
            base = by_alias.get(baseline_of(report, v.get("family")))
            if base is not None:
                row["baseline"] = base["alias"]
                row["x_baseline"] = {k: ratio(row[k], metric(base, k)) for k in keys}
        elif v.get("status") == "predicted":
            row["weights_disk_bytes"] = (v.get("disk") or {}).get("weights_bytes")
            row["bytes_per_token"] = (v.get("weights") or {}).get("bytes_per_token")
        rows.append(row)
    pbase = next((r["predicted_tok_s"] for r, v in zip(rows, variants) if v.get("is_16bit") and r["predicted_tok_s"]),
                 None)
    for r in rows:
        r["predicted_x_base"] = ratio(r["predicted_tok_s"], pbase)
    sq = served_quality.results(report) if report.get("served_quality") else {}
    for r in rows:  # the served quality beside the speed: "x tok/s at y KL"
        summ = (sq.get(r["alias"]) or {}).get("summary") or {}
        for split in served_quality.SPLITS:
            r[f"kl_{split}"] = (summ.get(split) or {}).get("kl_mean")
    return {"baseline": base_alias, "top_concurrency": top, "rows": rows, "served_quality": sq,
            "tuned_vs_rtn": served_quality.tuned_vs_rtn(report, sq) if sq else []}


# ---------------------------------------------------------------- markdown

def _f(x, nd: int = 1, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "–"
    return f"{x:,.{nd}f}{unit}"


def _gb(b) -> str:
    """GB with 3 significant digits (tiny models' megabytes stay readable)."""
    return "–" if b is None else f"{b / GB:.3g}"


def _x(r) -> str:
    return "–" if r is None else f"{r:.2f}x"


def _loads(x) -> str:
    return "/".join(f"{v:.1f}" for v in x) if x else "?"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def memory_column(report: dict) -> tuple[str, str]:
    """The memory figure of the headline: device peak on a GPU; on a CPU the serving process tree's
    resident peak (vLLM), or the weights as loaded in memory (transformers: the bench's own process
    also holds the previous variants' allocator leftovers, so its RSS is shown in the memory table only)."""
    if ((report.get("environment") or {}).get("hardware") or {}).get("gpus"):
        return "device_peak_bytes", "device peak GB"
    if (report.get("settings") or {}).get("engine") == "transformers":
        return "weights_loaded_bytes", "weights in memory GB"
    return "rss_peak_bytes", "RSS peak GB"


def headline_table(report: dict, d: dict | None = None) -> list[str]:
    d = d or derive(report)
    top = d["top_concurrency"]
    mem_key, mem_head = memory_column(report)
    pred = any(r.get("predicted_tok_s") is not None for r in d["rows"])
    kl = bool(d.get("served_quality"))
    head = ["variant", "status", "engine", "threads", "weights on disk GB", "bytes read/token GB", mem_head,
            "bs1 decode tok/s", *(["KL vs 16-bit, text / image"] if kl else []),
            *(["predicted bs1 tok/s", "predicted x base"] if pred else []),
            "% of BW limit", f"c={top} out tok/s", "TTFT ms (bs1)", "TPOT ms (bs1)",
            "decode x base", f"c={top} x base", "weights x base", "memory x base"]
    rows = []
    for r in d["rows"]:
        p = [_f(r.get("predicted_tok_s")), _x(r.get("predicted_x_base"))] if pred else []
        if r["status"] == "predicted":
            rows.append([r["alias"], "predicted", r.get("server") or "–", "–", _gb(r["weights_disk_bytes"]),
                         _gb(r["bytes_per_token"]), "–", "–", *(["–"] if kl else []), *p, *["–"] * 8])
            continue
        if r["status"] != "ok":
            rows.append([r["alias"], "**failed**", *["–"] * (len(head) - 2)])
            continue
        xb = r.get("x_baseline") or {}
        mem, memx = r[mem_key], xb.get(mem_key)
        k = [_kl(r.get("kl_text")) + ("" if r.get("kl_image") is None else f" / {_kl(r['kl_image'])}")] if kl else []
        rows.append([r["alias"], "ok", r.get("server") or "–", r.get("threads") or "–", _gb(r["weights_disk_bytes"]), _gb(r["bytes_per_token"]), _gb(mem),
                     _f(r["decode_tok_s_bs1"]), *k, *p, _f(r["roofline"]["pct_of_limit"], 0, "%"),
                     _f(r["output_tok_s_top"]), _f(r["ttft_ms_bs1"], 0), _f(r["tpot_ms_bs1"], 1),
                     _x(xb.get("decode_tok_s_bs1")), _x(xb.get("output_tok_s_top")),
                     _x(xb.get("weights_disk_bytes")), _x(memx)])
    return _table(head, rows)


def _kl(x) -> str:
    """4 decimals, or 2 significant digits below 0.001 (4-bit KLs of small models are 1e-4 to 1e-3)."""
    if x is None:
        return "–"
    return f"{x:.4f}" if x == 0 or x >= 1e-3 else f"{x:.2g}"


def served_quality_section(report: dict, d: dict) -> list[str]:
    """The teacher-forced table (bench/served_quality.py): per variant and split KL mean / p95, top-1, perplexity;
    one line per variant or prompt that could not be scored."""
    sq, meta = d.get("served_quality") or {}, report.get("served_quality") or {}
    if not meta:
        return []
    L = ["## Served quality: teacher-forced vs the 16-bit model", "",
         (f"Each variant's next-token top-{meta.get('k')} log-probabilities, through its served endpoint, at every "
          f"position of its family's 16-bit model's own greedy continuation ({meta.get('new_tokens')} tokens) of the "
          "fixed prompts, conditioned on prompt + reference prefix. KL(16-bit || variant) in nats over top-k, tail "
          f"rule: {meta.get('tail_rule')}. top-1 = the variant's most likely token is the 16-bit model's; ppl = the "
          "variant's perplexity of the reference continuation (≥: the reference token was outside llama.cpp's "
          f"top {meta.get('llamacpp_logprobs')} at some positions, its tail mass bounds it)."), ""]
    head = ["variant", "baseline", "engine"]
    for split in served_quality.SPLITS:
        head += [f"{split} positions", f"{split} KL mean", f"{split} KL p95", f"{split} top-1", f"{split} ppl"]
    rows, notes = [], []
    for alias, r in sq.items():
        if r.get("reason"):
            notes.append(f"- {alias}: not scored: {r['reason']}")
            continue
        row = [alias, r["baseline"], r.get("kind") or "–"]
        for split in served_quality.SPLITS:
            m = (r.get("summary") or {}).get(split)
            if m is None:
                why = (r.get("errors") or {}).get(split)
                row += ["–", "n/a" if why else "–", "–", "–", "–"]
                if why:
                    notes.append(f"- {alias}, {split}: not available: {why}")
                continue
            ppl = ("≥" if m["ref_bounded"] else "") + _f(m["ppl"], 2)
            row += [m["positions"], _kl(m["kl_mean"]), _kl(m["kl_p95"]), _f(100 * m["top1"], 1, "%"), ppl]
        rows.append(row)
        notes += [f"- {alias}: {n}" for n in r.get("notes") or []]
    L += _table(head, rows) + [""]
    pairs = d.get("tuned_vs_rtn") or []
    if pairs:
        L += [("AutoRound tuned vs plain RTN, same family, format, kernel path and engine (KL mean over all "
               "positions, text and image):"), ""]
        L += _table(["tuned", "RTN", "KL tuned", "KL RTN", "tuned / RTN"],
                    [[f"{p['tuned']} ({p['tuned_recipe']})", p["rtn"], _kl(p["kl_tuned"]), _kl(p["kl_rtn"]),
                      f"{p['ratio']:.2f}"] for p in pairs]) + [""]
    L += [f"- {x}" for x in meta.get("problems") or []]
    return L + notes + [""]


def predicted_section(report: dict) -> list[str]:
    """How the predicted column was made (bench/predict.py): per variant its layout, bytes per GPU, bandwidth,
    limit and efficiency, and why the layout; empty for a report without predictions."""
    vs = [v for v in report.get("variants", []) if v.get("predicted") or v.get("status") == "predicted"]
    if not vs:
        return []
    pr = report.get("prediction") or {}
    L = ["## Predicted decode (batch 1, one replica)", "",
         "predicted tok/s = efficiency x vendor memory bandwidth / bytes read per decoded token per GPU (tensor "
         "parallel divides the bytes; its all-reduce cost is ignored). Efficiencies are shares of the same limit "
         "measured on one GPU: " + "; ".join(f"{k} {a['efficiency']:.1%} ({a['tok_s']:g} tok/s at "
                                               f"{a['bytes_per_token'] / GB:.2f} GB/token on {a['gpu']}: {a['what']})"
                                               for k, a in (pr.get("anchors") or {}).items())
         + (f" — {pr['source']}." if pr.get("source") else "."), ""]
    head = ["variant", "layout", "fits", "longest context", "kernel", "GB/token/GPU", "bandwidth GB/s",
            "limit tok/s", "efficiency", "predicted tok/s"]
    rows = []
    for v in vs:
        p, plan = v.get("predicted") or {}, v.get("plan") or {}
        rows.append([v["alias"], plan.get("layout", "–"), plan.get("status", "–"), plan.get("max_context", "–"),
                     f"{plan.get('kernel') or 'none'} ({plan.get('dtype')})" if plan else "–",
                     _gb(p.get("bytes_per_gpu")), _f(p.get("bandwidth_gb_s"), 0), _f(p.get("limit_tok_s"), 0),
                     _f(100 * p["efficiency"], 1, "%") if p else "–", _f(p.get("tok_s"), 0)])
    L += _table(head, rows) + [""]
    for v in vs:
        plan = v.get("plan") or {}
        if plan.get("why"):
            L.append(f"- {v['alias']}: " + "; ".join(plan["why"]) + (f". `{plan['command']}`" if plan.get("command")
                                                                        and plan.get("status") != "no" else ""))
    return L + [""]


def render_md(report: dict) -> str:
    d = derive(report)
    s = report.get("settings", {})
    env = report.get("environment", {})
    hw = env.get("hardware", {})
    L: list[str] = []
    L.append(f"# Benchmark: {', '.join(s.get('models', []))}")
    L.append("")
    L.append(f"{report.get('created', '')} · engine **{s.get('engine')}** · "
             f"{'GPU: ' + ', '.join(g['name'] for g in hw.get('gpus', [])) if hw.get('gpus') else 'CPU: ' + str(hw.get('cpu_model'))}"
             f" · baseline **{d['baseline'] or 'none (no 16-bit variant ran)'}**")
    L.append("")
    if report.get("kind") == "predict":
        L.append(f"Predictions only, for --gpu {s.get('gpu')}" + (f" on {s['nodes']} machines" if s.get("nodes", 1) > 1
                 else "") + ": no server was started and nothing was measured.")
    else:
        L.append(f"Workload: {s.get('prompts')} requests per concurrency level (at least one per slot), "
                 f"{s.get('input_len')} prompt tokens, {s.get('output_len')} output tokens forced "
                 f"(ignore_eos + min_tokens), greedy, streaming; concurrency "
                 f"{', '.join(map(str, s.get('concurrency', [])))}.")
    L.append("")
    if report.get("notes"):
        L += ["## Findings", "", report["notes"].strip(), ""]
    L += ["## Headline", ""]
    L += headline_table(report, d)
    L.append("")
    L.append("bs1 decode tok/s = 1000 / mean TPOT at concurrency 1 (what one user sees once the answer streams); "
             "% of BW limit = bs1 decode tok/s / (copy bandwidth / bytes read per token). "
             "Ratios are variant / baseline (for TTFT/TPOT lower is better, for tok/s higher is better).")
    L.append("")
    L += predicted_section(report)
    failed = [r for r in d["rows"] if r["status"] not in ("ok", "predicted")]
    if failed:
        L += ["## Failed variants", ""]
        L += [f"- **{r['alias']}**: {r['reason']}" for r in failed]
        L.append("")
    # per-scenario tables
    for scen in ("text", "image"):
        vs = [v for v in report.get("variants", []) if v.get("status") == "ok" and (v.get("runs") or {}).get(scen)]
        if not vs:
            continue
        L += [f"## Serving metrics: {'text only' if scen == 'text' else 'one image per request'}", ""]
        head = ["variant", "c", "done/fail", "out tok/s", "req/s", "TTFT mean", "TTFT p50", "TTFT p99",
                "TPOT mean", "TPOT p50", "TPOT p99", "ITL mean", "ITL p50", "ITL p99", "out tokens"]
        rows = []
        for v in vs:
            for c, r in sorted(v["runs"][scen].items(), key=lambda kv: int(kv[0])):
                rows.append([v["alias"], c, f"{r['completed']}/{r['failed']}", _f(r["output_throughput"]),
                             _f(r["request_throughput"], 2), _f(r["mean_ttft_ms"], 0), _f(r["median_ttft_ms"], 0),
                             _f(r["p99_ttft_ms"], 0), _f(r["mean_tpot_ms"]), _f(r["median_tpot_ms"]),
                             _f(r["p99_tpot_ms"]), _f(r["mean_itl_ms"]), _f(r["median_itl_ms"]), _f(r["p99_itl_ms"]),
                             r["total_output_tokens"]])
        L += _table(head, rows)
        L += ["", ("Times in ms. TTFT, TPOT, ITL as `vllm bench serve` defines them; out tok/s = output tokens / "
                   "wall time of the level.")]
        early = [(v["alias"], c, r["ended_early"], r["completed"]) for v in vs
                 for c, r in sorted(v["runs"][scen].items(), key=lambda kv: int(kv[0])) if r.get("ended_early")]
        if early:
            L += ["Ended before the forced length: " + "; ".join(f"{a} c={c}: {n} of {m}" for a, c, n, m in early)
                  + " (the server stopped them, e.g. llama.cpp at its end-of-turn text even with its end tokens "
                    "biased away; their per-token times use the tokens they produced)."]
        L.append("")
    if any(v.get("status") == "ok" for v in report.get("variants", [])):
        L += _measured_sections(report, d)
    L += served_quality_section(report, d)
    # quality
    q = report.get("quality") or {}
    if q:
        L += ["## Quality: greedy answers vs the baseline", ""]
        head = ["variant", "baseline", "token match rate", "mean identical prefix (tokens)", "identical answers"]
        L += _table(head, [[a, r.get("baseline", d["baseline"]), _f(100 * r["mean_match_rate"], 0, "%"),
                            _f(r["mean_prefix"], 1), f"{r['exact']}/{r['prompts']}"] for a, r in q.items()])
        L.append("")
        L.append(f"{len(s.get('quality_prompts', []))} prompts, up to {s.get('quality_tokens')} tokens each. "
                 "First prompt, first 120 characters of each answer:")
        L.append("")
        for v in report.get("variants", []):
            if v.get("answers"):
                L.append(f"- {v['alias']}: `{' '.join(v['answers'][0].split())[:120]}`")
        L.append("")
    # environment
    L += ["## Environment", ""]
    vers = env.get("versions") or {}
    L.append(f"- hardware: {hw.get('cpu_model')}, {hw.get('cores')} cores, flags {' '.join(hw.get('cpu_flags', []))}, "
             f"{hw.get('mem_total_gib')} GiB RAM" + (", GPUs: " + ", ".join(f"{g['name']} {g['memory_gib']} GiB" for g in hw.get("gpus", [])) if hw.get("gpus") else ""))
    L.append(f"- W4A16 kernel here: {hw.get('cpu_int4_path') if not hw.get('gpus') else 'GPU'}")
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v) + f", python {env.get('python')}")
    L.append(f"- platform: {env.get('platform')}; git commit {env.get('git_commit') or '?'}; "
             f"load average (1/5/15 min) at start {_loads(env.get('load_average'))}, "
             f"at end {_loads(env.get('load_average_end'))} on {hw.get('cores')} cores")
    if env.get("env"):
        L.append("- env: " + " ".join(f"{k}={v}" for k, v in env["env"].items()))
    for v in report.get("variants", []):
        e = v.get("engine") or {}
        bits = []
        if e.get("argv"):
            bits.append("`" + " ".join(e["argv"]) + "`")
        for k in ("startup_s", "threads", "torch_threads", "linear_kernel", "compile", "compile_note", "base_url"):
            if e.get(k) not in (None, "", []):
                bits.append(f"{k}={_f(e[k]) if isinstance(e[k], float) else e[k]}")
        if bits:
            L.append(f"- {v['alias']}: " + "; ".join(bits))
    L.append(f"- bench wall time: {_f(report.get('duration_s'), 0)} s")
    L += ["", "Reproduce:", "", "```", env.get("command", "python -m bench"), "```", ""]
    if (report.get("plots")):
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    return "\n".join(L)


def _measured_sections(report: dict, d: dict) -> list[str]:
    """The memory and roofline sections: what the variants that ran measured."""
    s, hw = report.get("settings", {}), (report.get("environment") or {}).get("hardware") or {}
    L: list[str] = []
    L += ["## Memory", ""]
    head = ["variant", "weights on disk GB", "folder GB", "weights in memory GB", "RSS after start GB", "RSS peak GB",
            "vLLM weights GiB (log)", "device peak GB", "plan GB", "RSS peak / plan"]
    rows = []
    for v in report.get("variants", []):
        if v.get("status") != "ok":
            continue
        m, dsk = v.get("memory") or {}, v.get("disk") or {}
        rows.append([v["alias"], _gb(dsk.get("weights_bytes")), _gb(dsk.get("folder_bytes")),
                     _gb((v.get("engine") or {}).get("weights_bytes_loaded")), _gb(m.get("rss_after_start_bytes")), _gb(m.get("rss_peak_bytes")),
                     _f(m.get("vllm_weights_gib"), 2), _gb(m.get("device_peak_bytes") or m.get("gpu_used_peak_bytes")),
                     _gb((v.get("plan") or {}).get("predicted_bytes")),
                     _f((v.get("plan") or {}).get("measured_over_predicted"), 2)])
    L += _table(head, rows)
    if hw.get("gpus"):
        L += ["", ("device peak = the GPU's used memory (nvidia-smi, every process on it) for vLLM, or torch's peak "
                   "allocation for the transformers engine; vLLM reserves its KV cache up front "
                   "(--gpu-memory-utilization), so its weights memory is the logged figure."), ""]
    elif s.get("engine") == "transformers":
        L += ["", ("RSS = resident memory of the bench process itself (the model runs in it; earlier variants' "
                   "freed memory may still count); weights in memory = the loaded model's parameters and buffers."), ""]
    else:
        L += ["", ("RSS = resident memory of the whole serving process tree (API server + engine workers), "
                   "sampled every 0.25 s. plan = `python -m serve --plan`'s resident-memory prediction for the "
                   "server as started (its context and KV space, the top concurrency)."), ""]
    # roofline
    bw = report.get("bandwidth") or {}
    L += ["## Roofline (batch-1 decode)", ""]
    by = bw.get("by_threads") or {}
    L.append(f"Measured copy bandwidth: {_f(bw.get('gb_s'))} GB/s"
             + (" (" + ", ".join(f"{t} thread{'s' if t != '1' else ''}: {_f(g)}" for t, g in by.items()) + ")" if by else "")
             + " (best of the measurements before and after the variants ran"
             + (": " + " / ".join(_f(m.get("gb_s")) for m in bw["measurements"]) + " GB/s" if bw.get("measurements") else "")
             + "). Bytes per token = decoder weights + LM head as stored (4-bit weights with their scales/zeros); "
               "embeddings (one row per token) and the vision tower are not read per decoded token.")
    L.append("")
    head = ["variant", "bytes/token GB", "decoder linears GB", "LM head GB", "bandwidth GB/s", "limit tok/s",
            "bs1 tok/s", "achieved GB/s", "% of limit"]
    rows = []
    for r, v in zip(d["rows"], report.get("variants", [])):
        if v.get("status") != "ok":
            continue
        g = (v.get("weights") or {}).get("bytes_by_group") or {}
        rf = r.get("roofline") or roofline((v.get("weights") or {}).get("bytes_per_token"), None, bandwidth_for(report, v))
        rows.append([v["alias"], _gb(rf["bytes_per_token"]), _gb(g.get("decoder_linear")), _gb(g.get("lm_head")),
                     _f(rf["bandwidth_gb_s"]), _f(rf["limit_tok_s"]), _f(rf["tok_s"]), _f(rf["achieved_gb_s"], 2),
                     _f(rf["pct_of_limit"], 0, "%")])
    L += _table(head, rows)
    over = [r["alias"] for r in d["rows"] if ((r.get("roofline") or {}).get("pct_of_limit") or 0) > 100]
    if over:
        L += ["", (f"Above 100%: {', '.join(over)} — weights this small stay in the CPU caches, so memory bandwidth "
                   "does not bound them (a model of real size is the test of the limit).")]
    L.append("")
    return L


# ---------------------------------------------------------------- writing

def write(report: dict, out: Path, overwrite: bool = False, plots: bool = True) -> Path:
    """Write report.json, report.md and the plots into `out` atomically (temp folder, then rename)."""
    with atomic_folder(out, replace=overwrite) as tmp:
        report["derived"] = derive(report)
        if plots:
            from bench.plots import make_plots

            report["plots"] = make_plots(report, tmp, memory_column(report))
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (tmp / "report.md").write_text(render_md(report))
        for f in [tmp, *tmp.iterdir()]:
            f.chmod(0o755 if f.is_dir() else 0o644)
    return Path(out)
