"""Quality side by side: the same greedy prompts to every variant, token agreement vs the 16-bit model.

Agreement of a variant's answer with the baseline's is counted on tokens (the shared tokenizer):
`match_rate` = positions where both have the same token / the longer answer's length, and
`prefix` = how many leading tokens are identical (greedy decoding diverges for good after the
first different token, so the prefix is the stricter measure).
"""
from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def agreement(tokens: list[int], baseline: list[int]) -> dict:
    longest = max(len(tokens), len(baseline))
    same = sum(1 for x, y in zip(tokens, baseline) if x == y)
    return {
        "match_rate": (same / longest) if longest else 1.0,
        "prefix": common_prefix(tokens, baseline),
        "tokens": len(tokens),
        "baseline_tokens": len(baseline),
        "exact": tokens == baseline,
    }


def encode(tokenizer, text: str) -> list[int]:
    if tokenizer is None:
        return text.split()  # word-level fallback: still a fair side-by-side comparison
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def compare(answers: dict[str, list[str]], baseline: str, tokenizer=None) -> dict:
    """answers: variant -> one answer per prompt. Returns variant -> summary and per-prompt agreement."""
    base = answers.get(baseline)
    out: dict[str, dict] = {}
    if base is None:
        return out
    base_tok = [encode(tokenizer, t) for t in base]
    for name, texts in answers.items():
        rows = [agreement(encode(tokenizer, t), b) for t, b in zip(texts, base_tok)]
        out[name] = {
            "mean_match_rate": sum(r["match_rate"] for r in rows) / len(rows) if rows else None,
            "mean_prefix": sum(r["prefix"] for r in rows) / len(rows) if rows else None,
            "exact": sum(r["exact"] for r in rows),
            "prompts": len(rows),
            "per_prompt": rows,
        }
    return out
