"""`quantize --verify-served`: serve the 16-bit base and each staged export the way `python -m serve` would on this
machine (vLLM, with the CPU int4 path serve picks; llama.cpp's server for GGUF), one server at a time, and score
them teacher-forced through the endpoint (bench/served_quality.py: top-k KL to the base, top-1, perplexity, text
and image positions). The numbers go into the model card beside verify's transformers ones: they are what a user of
`serve` gets from this export on this kind of machine. Costs one server start-up per model (40-120 s on a CPU)."""
from __future__ import annotations

from pathlib import Path


def _served(alias: str, location: Path, modality: str, log):
    from bench.engines import make

    engine = make("vllm", alias, str(location), modality)
    log(f"verify-served: starting {alias}")
    engine.open()
    return engine


def run(base_dir: Path, staged: dict[str, Path], modality: str, log=print) -> dict:
    """{"k", "new_tokens", "base": {...}, "results": {format: {"server", "path", "summary"} or {"error"}}}; a server
    that fails to start or to answer is that format's one-line error (the artifact is still written)."""
    from bench import served_quality as sq
    from bench.engines import VariantFailed, one_line
    from bench.workload import default_image, load_tokenizer
    from core.errors import UserError

    tok = load_tokenizer(str(base_dir))
    image = default_image() if modality == "vl" else None
    out: dict = {"k": sq.K, "new_tokens": sq.NEW_TOKENS, "tail_rule": sq.TAIL_RULE, "results": {}}

    def scorer(engine):
        kind = {"vLLM": "vllm", "llama.cpp": "llama.cpp"}.get(engine.info.get("server"), "vllm")
        return sq.Scorer(engine.base_url, engine.model, kind, engine.api_key, engine.info.get("context"),
                         chat_prefill=modality == "vl")

    def path_of(engine) -> str:
        info = engine.info
        return info.get("server", "?") + (f" {info['cpu_int4']}" if info.get("cpu_int4") else "")

    engine = None
    try:
        engine = _served("base", base_dir, modality, log)
        s = scorer(engine)
        refs = sq.references(s, modality, tok, image)
        base_rec = sq.score_variant(s, refs, tok, image)
        out["base"] = {"server": path_of(engine), "reference_errors": [r["error"] for r in refs if r.get("error")],
                       "self": sq.summarize(sq.load_positions(base_rec), sq.load_positions(base_rec))}
    except (VariantFailed, UserError, OSError, RuntimeError) as e:
        out["error"] = f"the 16-bit base could not be served: {one_line(e)}"
        return out
    finally:
        if engine is not None:
            engine.close()
    for fmt, folder in staged.items():
        engine = None
        try:
            engine = _served(f"{fmt} export", folder, modality, log)
            rec = sq.score_variant(scorer(engine), refs, tok, image)
            summary = sq.summarize(sq.load_positions(base_rec), sq.load_positions(rec))
            out["results"][fmt] = {"server": path_of(engine), "summary": summary, "errors": rec["errors"],
                                   "notes": rec["notes"]}
            a = summary.get("all") or {}
            log(f"verify-served {fmt} ({path_of(engine)}): KL {a.get('kl_mean', float('nan')):.5f}, "
                f"top-1 {a.get('top1', 0):.1%} over {a.get('positions', 0)} positions")
        except (VariantFailed, UserError, OSError, RuntimeError) as e:
            out["results"][fmt] = {"error": one_line(e)}
        finally:
            if engine is not None:
                engine.close()
    return out


def card_lines(served: dict | None, this_format: str) -> list[str]:
    """The model card's "Served quality" section (empty without --verify-served)."""
    if not served:
        return []
    L = ["", "## Served quality (`--verify-served`)", ""]
    if served.get("error"):
        return L + [f"Not measured: {served['error']}."]
    L += [(f"The 16-bit base and each export served as `python -m serve` would on the machine that made this "
           f"artifact (base: {served['base']['server']}), scored teacher-forced through the endpoint on the base's "
           f"own greedy continuations ({served['new_tokens']} tokens per prompt): KL(base || export) over the "
           f"top-{served['k']} log-probabilities the server returns (tail rule: {served['tail_rule']}), top-1 "
           "agreement and the export's perplexity of the base's continuation."), "",
          "| export | served by | split | positions | KL mean | KL p95 | top-1 | ppl |",
          "|---|---|---|---|---|---|---|---|"]
    for fmt, r in served["results"].items():
        mark = " (this artifact)" if fmt == this_format else ""
        if r.get("error"):
            L.append(f"| {fmt}{mark} | failed | | | | | | {r['error']} |")
            continue
        for split in ("text", "image"):
            m = r["summary"].get(split)
            if m is None:
                why = (r.get("errors") or {}).get(split)
                if why:
                    L.append(f"| {fmt}{mark} | {r['server']} | {split} | n/a | | | | {why} |")
                continue
            L.append(f"| {fmt}{mark} | {r['server']} | {split} | {m['positions']} | {m['kl_mean']:.5f} | "
                     f"{m['kl_p95']:.5f} | {m['top1']:.1%} | {m['ppl']:.2f} |")
    return L
