"""Served quality: what each engine, format and kernel costs against the 16-bit model, measured through the live
OpenAI endpoint that serves it (teacher forcing, no model loaded here).

Reference: the 16-bit model's own greedy continuation (`NEW_TOKENS` tokens, or fewer where it ends) of a fixed local
prompt set: bench's quality prompts as text, and for VL models verify's image prompts with bench's test picture.
Every variant is then asked, at each reference position, for its next-token top-`K` log-probabilities conditioned on
prompt + reference prefix; the 16-bit model is scored the same way (its own positions, its own requests).

- vLLM: text prompts are rendered here with the model's chat template and sent as token ids to `/v1/completions`
  with the reference ids appended, `prompt_logprobs: K`, `max_tokens: 1`: one request per prompt. Image prompts go
  to `/v1/chat/completions` with the reference appended as a final assistant message (`continue_final_message`,
  `add_generation_prompt: false`), `prompt_logprobs: K`, `return_token_ids` (the scored positions are the prompt ids
  after the ones the reference request reported). vLLM's `prompt_logprobs` are raw model log-probabilities and
  limited by its `--max-logprobs` (20 by default): K = 20.
- llama.cpp has no prompt logprobs: one 1-token request per position, `logprobs: KK` (KK = `LLAMACPP_LOGPROBS`,
  more than K so that the reference token's log-probability is usually among them; the KL uses the top K only).
  Text: `/v1/completions` with the token-id prompt (its prompt cache keeps the prefix). Images, and every prompt of
  a server with a vision projector (it refuses token-id prompts: HTTP 400): the chat endpoint with the reference
  prefix (decoded text) as a final assistant message, which llama.cpp continues (prefill).

Measures, per variant, over the positions both it and the 16-bit model have, split into text-only and
image-conditioned positions (prompts with a picture):
- KL(16-bit || variant) over top-K, mean and p95 (linear interpolation, bench.metrics.percentile). Tail rule: both
  distributions are put on one partition, the union U of their two top-K lists plus one "tail" bucket. A
  distribution's tail mass (1 - the sum of its top K) is split evenly into m + 1 shares, m = the tokens of U it did
  not list; each such token gets one share, at most the distribution's own K-th largest probability (a token it did
  not list cannot be more likely than the ones it did); the tail bucket gets the rest. Identical distributions give
  0 exactly; a swap inside the top K, or a top token the other model does not list, is counted. It is an estimate of
  the full-vocabulary KL from top-K data, the same for every engine.
- top-1 agreement: the variant's most likely token equals the 16-bit model's.
- perplexity of the reference continuation: exp(-mean log q(reference token)). vLLM always returns the prompt
  token's log-probability; where llama.cpp did not list it among its KK, its log tail mass (an upper bound) is used
  and the count is reported (`ref_bounded`: the perplexity is then a lower bound).

Pure maths first (unit-tested), then the two scorers, then what bench's runner calls.
"""
from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from bench.metrics import percentile

K = 20  # top-k log-probs per position (vLLM's default --max-logprobs)
NEW_TOKENS = 16  # reference continuation length
LLAMACPP_LOGPROBS = 100  # asked of llama.cpp per position (for the reference token's log-probability)
FLOOR = 1e-12  # probability floor of an empty tail bucket
TAIL_RULE = ("union of both top-k lists + one tail bucket; each distribution's tail mass split evenly over the union "
             "tokens it did not list and the bucket (each share at most its k-th probability)")
SPLITS = ("text", "image")


# ---------------------------------------------------------------- maths (pure)

def top_k(entries: dict[int, float], k: int = K) -> dict[int, float]:
    """The k most likely entries (token id -> log-probability); a server may add the prompt token beyond its top k."""
    return dict(sorted(entries.items(), key=lambda kv: -kv[1])[:k])


def _partition(d: dict[int, float], union: set[int], k: int) -> tuple[dict[int, float], float]:
    """(probability of every token of `union`, tail bucket) for one top-k distribution, by TAIL_RULE."""
    probs = {t: math.exp(lp) for t, lp in d.items()}
    tail = max(0.0, 1.0 - sum(probs.values()))
    missing = [t for t in union if t not in probs]
    if missing:
        cap = min(probs.values()) if len(probs) >= k and probs else 1.0
        share = min(tail / (len(missing) + 1), cap)
        for t in missing:
            probs[t] = share
        tail -= share * len(missing)
    return probs, tail


def kl_topk(p: dict[int, float], q: dict[int, float], k: int = K) -> float:
    """KL(p || q) in nats between two top-k log-probability dicts (token id -> logprob), by TAIL_RULE."""
    p, q = top_k(p, k), top_k(q, k)
    union = set(p) | set(q)
    pp, pt = _partition(p, union, k)
    qq, qt = _partition(q, union, k)
    kl = sum(pp[t] * (math.log(pp[t]) - math.log(max(qq[t], FLOOR))) for t in union if pp[t] > 0)
    if pt > FLOOR:
        kl += pt * (math.log(pt) - math.log(max(qt, FLOOR)))
    return max(0.0, kl)


def argmax(d: dict[int, float]) -> int | None:
    return max(d, key=d.get) if d else None


def ref_logprob(pos: dict) -> tuple[float, bool]:
    """(log q(reference token), bounded): the listed value, else the log of the tail mass (an upper bound)."""
    top = pos["top"]
    if pos.get("ref_lp") is not None:
        return float(pos["ref_lp"]), False
    if pos["ref"] in top:
        return float(top[pos["ref"]]), False
    tail = max(FLOOR, 1.0 - sum(math.exp(lp) for lp in top.values()))
    return math.log(tail), True


def summarize(base: list[dict], variant: list[dict], k: int = K) -> dict:
    """Per split ("text", "image", "all"): positions, mean / p95 KL(base || variant), top-1 agreement, the variant's
    perplexity of the reference. A position is {"prompt", "j", "image", "ref", "top": {id: logprob}, "ref_lp"};
    positions are matched on (prompt, j); those only one side has are left out."""
    mine = {(p["prompt"], p["j"]): p for p in variant}
    pairs = [(b, mine[(b["prompt"], b["j"])]) for b in base if (b["prompt"], b["j"]) in mine]
    out = {}
    for split in (*SPLITS, "all"):
        sel = [(b, v) for b, v in pairs if split == "all" or bool(b["image"]) == (split == "image")]
        if not sel:
            out[split] = None
            continue
        kls = [kl_topk(b["top"], v["top"], k) for b, v in sel]
        refs = [ref_logprob(v) for _, v in sel]
        out[split] = {"positions": len(sel), "kl_mean": sum(kls) / len(kls), "kl_p95": percentile(kls, 95),
                      "kl_max": max(kls),
                      "top1": sum(argmax(top_k(b["top"], k)) == argmax(top_k(v["top"], k)) for b, v in sel) / len(sel),
                      "ppl": math.exp(-sum(lp for lp, _ in refs) / len(refs)),
                      "ref_bounded": sum(1 for _, bounded in refs if bounded)}
    return out


# ---------------------------------------------------------------- requests

class Unavailable(Exception):
    """What a server cannot give (no logprobs, a refused request): recorded as the variant's reason, one line."""


def post(base_url: str, path: str, body: dict, api_key: str | None = None, timeout: float = 300.0) -> dict:
    """POST JSON to an OpenAI-compatible server (`base_url` with or without /v1; `path` from /v1 on); an HTTP or
    connection failure is Unavailable with one line."""
    req = urllib.request.Request(base_url.rstrip("/").removesuffix("/v1") + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read()).get("error")
            msg = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            msg = None
        raise Unavailable(f"HTTP {e.code} on {path}: {' '.join(str(msg or e.reason).split())[:200]}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise Unavailable(f"{path}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def detect_kind(base_url: str, api_key: str | None = None) -> str:
    """"llama.cpp" where the server answers llama.cpp's /props, else "vllm"."""
    req = urllib.request.Request(base_url.rstrip("/").removesuffix("/v1") + "/props",
                                 headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return "llama.cpp" if "default_generation_settings" in json.loads(r.read()) else "vllm"
    except (urllib.error.URLError, OSError, ValueError):
        return "vllm"


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    image: bool  # with the test picture


def prompts(modality: str) -> list[Prompt]:
    """The fixed prompt set: bench's quality prompts as text; a VL model also verify's image prompts."""
    from bench.workload import QUALITY_PROMPTS
    from quantize.verify import VL_PROMPTS

    out = [Prompt(i, t, False) for i, t in enumerate(QUALITY_PROMPTS)]
    if modality == "vl":
        out += [Prompt(len(out) + i, t, True) for i, t in enumerate(VL_PROMPTS)]
    return out


def _text_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    return [int(t) for t in (ids["input_ids"] if isinstance(ids, dict) else ids)]


def _image_message(text: str, image) -> dict:
    from serve.client import user_message

    return user_message(text, images=[image])


def _entries(d: dict | None) -> dict[int, float]:
    """vLLM's prompt-logprob dict (str(token id) -> {logprob, rank, ...}) -> {id: logprob}."""
    return {int(t): float(v["logprob"]) for t, v in (d or {}).items()}


def _llama_top(r: dict) -> dict[int, float]:
    try:
        top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {int(t["id"]): float(t["logprob"]) for t in top}
    except (KeyError, IndexError, TypeError) as e:
        raise Unavailable(f"the server returned no top logprobs ({type(e).__name__} {e})") from None


class Scorer:
    """One live endpoint: generates the reference (16-bit model) and scores reference positions."""

    def __init__(self, base_url: str, model: str, kind: str, api_key: str | None = None, context: int | None = None,
                 k: int = K, timeout: float = 600.0, chat_prefill: bool = False):
        """`chat_prefill`: llama.cpp only, score text prompts through the chat endpoint too (a server with a vision
        projector refuses token-id prompts)."""
        self.base_url, self.model, self.kind, self.api_key = base_url, model, kind, api_key
        self.context, self.k, self.timeout = context, k, timeout
        self.chat_prefill = chat_prefill and kind == "llama.cpp"

    def _post(self, path: str, body: dict) -> dict:
        return post(self.base_url, path, {"model": self.model, "temperature": 0.0, **body}, self.api_key,
                    self.timeout)

    def _fits(self, n_prompt: int, n_new: int, p: Prompt) -> None:
        if self.context and n_prompt + n_new + 1 > self.context:
            raise Unavailable(f"prompt {p.index} has {n_prompt} tokens + {n_new} new, over the server's context of "
                              f"{self.context}")

    # ------------------------------------------------------------ reference

    def reference(self, p: Prompt, tokenizer, image, n: int = NEW_TOKENS) -> dict:
        """The greedy continuation of prompt `p`: {"prompt", "text", "image", "prompt_ids", "ids"} (image prompts:
        prompt_ids as the server expanded them), or {"prompt", ..., "error"}."""
        ref = {"prompt": p.index, "text": p.text, "image": p.image}
        try:
            if p.image:
                if self.kind != "vllm":
                    raise Unavailable("image references need vLLM (prompt token ids of the expanded picture)")
                r = self._post("/v1/chat/completions", {"messages": [_image_message(p.text, image)], "max_tokens": n,
                                                        "return_token_ids": True})
                ref["prompt_ids"] = [int(t) for t in r.get("prompt_token_ids") or []]
                ref["ids"] = [int(t) for t in r["choices"][0].get("token_ids") or []]
            else:
                ids = _text_ids(tokenizer, p.text)
                self._fits(len(ids), n, p)
                ref["prompt_ids"] = ids
                if self.kind == "vllm":
                    r = self._post("/v1/completions", {"prompt": ids, "max_tokens": n, "return_token_ids": True})
                    ref["ids"] = [int(t) for t in r["choices"][0].get("token_ids") or []]
                else:
                    r = self._post("/v1/completions", {"prompt": ids, "max_tokens": n, "logprobs": 1})
                    ref["ids"] = [int(t["id"]) for t in (r["choices"][0].get("logprobs") or {}).get("content") or []]
            if not ref["ids"] or not ref["prompt_ids"]:
                raise Unavailable("the server returned no token ids for the reference")
        except Unavailable as e:
            ref["error"] = str(e)
        except (KeyError, IndexError, TypeError) as e:
            ref["error"] = f"unexpected reply shape ({type(e).__name__} {e})"
        return ref

    # ------------------------------------------------------------ scoring

    def score(self, ref: dict, tokenizer, image) -> list[dict]:
        """Positions of one reference ({"prompt", "j", "image", "ref", "top", "ref_lp"}); Unavailable if not."""
        if self.kind == "vllm":
            return self._score_vllm(ref, tokenizer, image)
        return self._score_llamacpp(ref, tokenizer, image)

    def _pos(self, ref: dict, j: int, tok: int, entries: dict[int, float], ref_lp: float | None = None) -> dict:
        return {"prompt": ref["prompt"], "j": j, "image": ref["image"], "ref": tok, "top": top_k(entries, self.k),
                "ref_lp": entries.get(tok, ref_lp)}

    def _score_vllm(self, ref: dict, tokenizer, image) -> list[dict]:
        plen, ids = len(ref["prompt_ids"]), ref["ids"]
        if ref["image"]:
            msgs = [_image_message(ref["text"], image),
                    {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=False)}]
            r = self._post("/v1/chat/completions", {"messages": msgs, "max_tokens": 1, "prompt_logprobs": self.k,
                                                    "continue_final_message": True, "add_generation_prompt": False,
                                                    "return_token_ids": True})
            full = [int(t) for t in r.get("prompt_token_ids") or []]
            lps = r.get("prompt_logprobs")
            if full[:plen] != ref["prompt_ids"]:
                raise Unavailable("the chat prompt with the reference appended does not start with the reference "
                                  "request's prompt (another chat template?)")
        else:
            full = ref["prompt_ids"] + ids
            self._fits(len(full), 1, Prompt(ref["prompt"], ref["text"], False))
            r = self._post("/v1/completions", {"prompt": full, "max_tokens": 1, "prompt_logprobs": self.k})
            lps = r["choices"][0].get("prompt_logprobs")
        if not lps or len(lps) < len(full):
            raise Unavailable("the server returned no prompt_logprobs (vLLM >= 0.4 has them; llama.cpp has not)")
        return [self._pos(ref, j, full[i], _entries(lps[i])) for j, i in enumerate(range(plen, len(full)))][:len(ids)]

    def _score_llamacpp(self, ref: dict, tokenizer, image) -> list[dict]:
        ask = max(self.k, LLAMACPP_LOGPROBS)
        out = []
        for j, tok in enumerate(ref["ids"]):
            if ref["image"] or self.chat_prefill:
                msgs = [_image_message(ref["text"], image) if ref["image"] else {"role": "user", "content": ref["text"]}]
                if j:
                    msgs.append({"role": "assistant",
                                 "content": tokenizer.decode(ref["ids"][:j], skip_special_tokens=False)})
                r = self._post("/v1/chat/completions", {"messages": msgs, "max_tokens": 1, "logprobs": True,
                                                        "top_logprobs": ask})
            else:
                prompt = ref["prompt_ids"] + ref["ids"][:j]
                self._fits(len(prompt), 1, Prompt(ref["prompt"], ref["text"], False))
                r = self._post("/v1/completions", {"prompt": prompt, "max_tokens": 1, "logprobs": ask,
                                                   "cache_prompt": True})
            entries = _llama_top(r)
            out.append(self._pos(ref, j, tok, entries))
        return out


# ---------------------------------------------------------------- what bench calls

def references(scorer: Scorer, modality: str, tokenizer, image, n: int = NEW_TOKENS) -> list[dict]:
    """The 16-bit model's references for the prompt set of its modality (bad prompts carry an "error")."""
    return [scorer.reference(p, tokenizer, image if p.image else None, n) for p in prompts(modality)]


def score_variant(scorer: Scorer, refs: list[dict], tokenizer, image) -> dict:
    """{"kind", "k", "positions": [...], "errors": {split: reason}}: every scorable reference, per split the first
    reason a prompt of that split could not be scored (the rest of the variant still is)."""
    rec = {"kind": scorer.kind, "k": scorer.k, "positions": [], "errors": {}, "notes": []}
    if scorer.chat_prefill:
        rec["notes"].append("text positions through the chat endpoint with the reference prefix as an assistant "
                            "prefill (llama.cpp with a vision projector refuses token-id prompts)")
    for ref in refs:
        if ref.get("error"):
            continue
        split = "image" if ref["image"] else "text"
        if split in rec["errors"]:
            continue
        try:
            pos = scorer.score(ref, tokenizer, image if ref["image"] else None)
        except Unavailable as e:
            rec["errors"][split] = str(e)
            continue
        except (KeyError, IndexError, TypeError, ValueError) as e:
            rec["errors"][split] = f"unexpected reply shape ({type(e).__name__} {e})"
            continue
        for p in pos:
            p["top"] = {str(t): lp for t, lp in p["top"].items()}  # JSON keys
        rec["positions"] += pos
    return rec


def load_positions(rec: dict) -> list[dict]:
    return [{**p, "top": {int(t): lp for t, lp in p["top"].items()}} for p in rec.get("positions") or []]


def results(report: dict) -> dict:
    """alias -> {"baseline", "summary" (summarize's), "errors", "kind"} or {"reason"}: each variant with its own
    family's 16-bit model (the runner picked it by bench.report.baseline_of), from the raw positions in report.json."""
    sq = report.get("served_quality") or {}
    by = {v["alias"]: v for v in report.get("variants", [])}
    out: dict[str, dict] = {}
    for v in report.get("variants", []):
        rec = v.get("served_quality")
        if rec is None:
            continue
        base = rec.get("baseline")  # the runner's pick, by bench.report.baseline_of's rule
        brec = (by.get(base) or {}).get("served_quality")
        if rec.get("reason") or not brec or brec.get("reason"):
            out[v["alias"]] = {"baseline": base, "reason": rec.get("reason") or (brec or {}).get("reason")
                               or f"its 16-bit baseline {base} has no scores"}
            continue
        k = min(int(rec.get("k") or K), int(brec.get("k") or K))
        out[v["alias"]] = {"baseline": base, "kind": rec.get("kind"), "errors": rec.get("errors") or {},
                           "notes": rec.get("notes") or [],
                           "summary": summarize(load_positions(brec), load_positions(rec), k),
                           "reference_errors": [r["error"] for r in (sq.get("references") or {}).get(base, [])
                                                if r.get("error")]}
    return out


def tuned_vs_rtn(report: dict, res: dict) -> list[dict]:
    """AutoRound-tuned vs plain-RTN pairs among the scored variants: same family, format, CPU int4 path and engine,
    one made with tuning iterations (recipe iters > 0, from its quantization_report.json), the other with none.
    Each: {"tuned", "rtn", "kl_tuned", "kl_rtn", "ratio"} on all positions (text and image together)."""
    def key(v):
        return v.get("family"), v.get("format"), v.get("cpu_int4"), (res.get(v["alias"]) or {}).get("kind")

    scored = [v for v in report.get("variants", []) if v.get("recipe") and (res.get(v["alias"]) or {}).get("summary")]
    out = []
    for t in scored:
        if not (t["recipe"].get("iters") or 0) > 0:
            continue
        for r in scored:
            if r["recipe"].get("iters") == 0 and key(r) == key(t):
                kt = (res[t["alias"]]["summary"].get("all") or {}).get("kl_mean")
                kr = (res[r["alias"]]["summary"].get("all") or {}).get("kl_mean")
                if kt is not None and kr:
                    out.append({"tuned": t["alias"], "tuned_recipe": t["recipe"].get("name"), "rtn": r["alias"],
                                "kl_tuned": kt, "kl_rtn": kr, "ratio": kt / kr})
    return out

