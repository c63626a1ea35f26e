"""bench/served_quality.py: the teacher-forced maths (top-k KL with its tail rule, p95, top-1, perplexity, splits),
the report section / plot built from report.json alone, and the scorer against a fake OpenAI server (vLLM's
prompt_logprobs shape, llama.cpp's per-position top_logprobs shape, a server without logprobs)."""
from __future__ import annotations

import copy
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import report as rep, served_quality as sq
from tests.unit.test_bench_report import REPORT


def _lp(probs: dict[int, float]) -> dict[int, float]:
    return {t: math.log(p) for t, p in probs.items()}


def _kl_full(p: dict[int, float], q: dict[int, float]) -> float:
    return sum(pv * math.log(pv / q[t]) for t, pv in p.items() if pv > 0)


# ---------------------------------------------------------------- maths

def test_identical_distributions_have_zero_kl():
    p = _lp({1: 0.5, 2: 0.2, 3: 0.1, 4: 0.05})  # top-4 of a larger vocabulary: 0.15 in the tail
    assert sq.kl_topk(p, dict(p), k=4) == 0.0
    assert sq.kl_topk(p, dict(p), k=2) == 0.0


def test_shifted_distribution_has_positive_kl_close_to_the_full_one():
    p = {1: 0.6, 2: 0.3, 3: 0.1}
    q = {1: 0.3, 2: 0.6, 3: 0.1}
    got = sq.kl_topk(_lp(p), _lp(q), k=3)  # the whole vocabulary listed: exact
    assert got == pytest.approx(_kl_full(p, q), rel=1e-9) and got > 0.1
    mild = {1: 0.55, 2: 0.35, 3: 0.1}
    assert 0 < sq.kl_topk(_lp(p), _lp(mild), k=3) < got  # a smaller shift costs less


def test_tail_rule_counts_a_swap_the_other_list_lacks():
    """top-2 lists {1, 2} and {1, 3}: each distribution's tail (0.2) is split between the union token it did not
    list and its tail bucket (0.1 each, at most its 2nd probability 0.3): the partition is {1, 2, 3, tail}."""
    p, q = _lp({1: 0.5, 2: 0.3}), _lp({1: 0.5, 3: 0.3})
    want = 0.5 * 0 + 0.3 * math.log(0.3 / 0.1) + 0.1 * math.log(0.1 / 0.3) + 0.1 * math.log(0.1 / 0.1)
    assert sq.kl_topk(p, q, k=2) == pytest.approx(want, rel=1e-9)
    # the share is capped at the distribution's own k-th probability
    small = _lp({1: 0.6, 2: 0.05})  # tail 0.35: a share would be 0.175 > 0.05
    probs, tail = sq._partition(small, {1, 2, 3}, 2)
    assert probs[3] == pytest.approx(0.05) and tail == pytest.approx(0.30)
    # a top-k list beyond k (vLLM adds the prompt token) is cut to the k most likely
    assert sq.top_k({1: -0.1, 2: -1.0, 3: -9.0}, 2) == {1: -0.1, 2: -1.0}
    # a wrong top token is expensive
    assert sq.kl_topk(_lp({1: 0.9, 2: 0.05}), _lp({3: 0.9, 4: 0.05}), k=2) > 1.0


def _pos(prompt, j, image, ref, probs, ref_lp=None):
    return {"prompt": prompt, "j": j, "image": image, "ref": ref, "top": _lp(probs), "ref_lp": ref_lp}


def test_summarize_splits_p95_top1_perplexity():
    same = {1: 0.7, 2: 0.2}
    base = [_pos(0, j, False, 1, same) for j in range(19)] + [_pos(0, 19, False, 1, same)]
    base += [_pos(1, j, True, 1, same) for j in range(4)]
    var = [_pos(0, j, False, 1, same) for j in range(19)] + [_pos(0, 19, False, 1, {2: 0.7, 1: 0.2})]
    var += [_pos(1, j, True, 1, {2: 0.7, 1: 0.2}) for j in range(4)]
    var.append(_pos(5, 0, False, 1, same))  # a position the baseline lacks: left out
    s = sq.summarize(base, var, k=2)
    t, i, a = s["text"], s["image"], s["all"]
    assert t["positions"] == 20 and i["positions"] == 4 and a["positions"] == 24
    one = sq.kl_topk(_lp(same), _lp({2: 0.7, 1: 0.2}), k=2)
    assert one > 0.5
    assert t["kl_mean"] == pytest.approx(one / 20) and t["kl_max"] == pytest.approx(one)
    assert t["kl_p95"] == pytest.approx(0.05 * one)  # linear interpolation: 19 zeros then one
    assert t["top1"] == pytest.approx(19 / 20) and i["top1"] == 0.0
    assert i["kl_mean"] == pytest.approx(one)
    assert t["ppl"] == pytest.approx(math.exp(-(19 * math.log(0.7) + math.log(0.2)) / 20))
    assert i["ppl"] == pytest.approx(1 / 0.2) and t["ref_bounded"] == 0
    assert sq.summarize(base, base, k=2)["all"]["kl_mean"] == 0.0
    assert sq.summarize(base[:20], var[:20], k=2)["image"] is None


def test_reference_logprob_listed_beyond_k_or_bounded_by_the_tail():
    assert sq.ref_logprob(_pos(0, 0, False, 9, {1: 0.5}, ref_lp=-3.0)) == (-3.0, False)  # vLLM's prompt token
    lp, bounded = sq.ref_logprob(_pos(0, 0, False, 9, {1: 0.5, 2: 0.3}))  # llama.cpp did not list it
    assert bounded and lp == pytest.approx(math.log(0.2))
    s = sq.summarize([_pos(0, 0, False, 9, {9: 0.9})], [_pos(0, 0, False, 9, {1: 0.5, 2: 0.3})], k=2)
    assert s["text"]["ref_bounded"] == 1 and s["text"]["ppl"] == pytest.approx(5.0)


# ---------------------------------------------------------------- report

def _sq_record(base_probs, var_probs, kind="vllm", image=False):
    return {"kind": kind, "k": 2, "errors": {}, "baseline": "m",
            "positions": [{**_pos(0, j, image, 1, var_probs),
                           "top": {str(t): lp for t, lp in _lp(var_probs).items()}} for j in range(4)]}


def _report_with_quality():
    r = copy.deepcopy(REPORT)
    same, off = {1: 0.7, 2: 0.2}, {1: 0.4, 2: 0.5}
    r["variants"][0]["served_quality"] = _sq_record(same, same)
    r["variants"][1]["served_quality"] = _sq_record(same, off)
    r["variants"][1]["served_quality"]["errors"] = {"image": "HTTP 400 on /v1/chat/completions: no images"}
    r["served_quality"] = {"k": 2, "new_tokens": 4, "llamacpp_logprobs": 100, "tail_rule": sq.TAIL_RULE,
                           "references": {"m": [{"prompt": 0, "ids": [1, 1, 1, 1]},
                                                {"prompt": 1, "error": "prompt 1 has 9000 tokens + 16 new, over the "
                                                                       "server's context of 2048"}]},
                           "problems": [("m: prompt 1: prompt 1 has 9000 tokens + 16 new, over the server's "
                                         "context of 2048")]}
    return r


def test_report_rows_read_speed_at_kl_and_say_what_is_missing(tmp_path):
    r = _report_with_quality()
    d = rep.derive(r)
    rows = {x["alias"]: x for x in d["rows"]}
    assert rows["m"]["kl_text"] == 0.0 and rows["m-gptq"]["kl_text"] > 0.1 and rows["m-gptq"]["kl_image"] is None
    assert d["served_quality"]["m-gptq"]["baseline"] == "m"
    md = rep.render_md(r)
    head = next(line for line in md.splitlines() if line.startswith("| variant | status"))
    row = next(line for line in md.splitlines() if line.startswith("| m-gptq | ok"))
    assert "KL vs 16-bit, text / image" in head and head.count("|") == row.count("|")
    assert f"| {rows['m-gptq']['kl_text']:.4f} |" in row
    assert "## Served quality: teacher-forced vs the 16-bit model" in md
    assert "- m-gptq, image: not available: HTTP 400" in md
    assert "over the server's context of 2048" in md
    out = rep.write(r, tmp_path / "rep")
    assert "quality.png" in json.loads((out / "report.json").read_text())["plots"]
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_baseline_scores_is_one_line():
    r = _report_with_quality()
    r["variants"][0]["served_quality"] = {"reason": "no tokenizer beside the model"}
    r["variants"][1]["served_quality"] = {"reason": "no 16-bit model of its family ran: nothing to compare with"}
    r["served_quality"]["problems"] = ["no 16-bit model ran among --models: served quality has no baseline"]
    md = rep.render_md(r)
    assert "- m-gptq: not scored: no 16-bit model of its family ran" in md
    assert "- no 16-bit model ran among --models" in md
    assert "| m-gptq | ok |" in md  # the speed rows are still written


# ---------------------------------------------------------------- scorers against a fake server

VOCAB = 8


def _dist(prefix: list[int]) -> dict[int, float]:
    """The fake model: next token = (last + 1) % VOCAB with probability 0.6, the rest spread."""
    nxt = (prefix[-1] + 1) % VOCAB
    return {t: math.log(0.6 if t == nxt else 0.4 / (VOCAB - 1)) for t in range(VOCAB)}


class _Fake(BaseHTTPRequestHandler):
    logprobs = True

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = body["prompt"]
        if self.path == "/v1/completions" and "prompt_logprobs" in body:  # vLLM
            k = body["prompt_logprobs"]
            pl = [None] + [{str(t): {"logprob": lp} for t, lp in
                            {**sq.top_k(_dist(ids[:i]), k), ids[i]: _dist(ids[:i])[ids[i]]}.items()}
                           for i in range(1, len(ids))]
            out = {"choices": [{"text": "x", "prompt_logprobs": pl if self.logprobs else None}]}
        elif "logprobs" in body and body.get("max_tokens") == 1:  # llama.cpp, one position
            top = [{"id": t, "logprob": lp} for t, lp in sq.top_k(_dist(ids), body["logprobs"]).items()]
            out = {"choices": [{"logprobs": {"content": [{"top_logprobs": top}]}}]}
        else:  # a greedy continuation
            seq = list(ids)
            for _ in range(body["max_tokens"]):
                seq.append(max(_dist(seq).items(), key=lambda kv: kv[1])[0])
            new = seq[len(ids):]
            out = {"choices": [{"token_ids": new, "logprobs": {"content": [{"id": t} for t in new]}}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Tok:
    def apply_chat_template(self, msgs, **kw):
        return [1, 2, len(msgs[0]["content"]) % VOCAB]


@pytest.fixture
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"  # as serve's Server.base_url
    srv.shutdown()
    _Fake.logprobs = True


def test_vllm_and_llamacpp_shapes_score_the_same_model_alike(fake):
    vllm = sq.Scorer(fake, "m", "vllm", k=4)
    refs = sq.references(vllm, "text", _Tok(), None, n=5)
    assert all(r["ids"] and len(r["ids"]) == 5 and not r.get("error") for r in refs)
    r0 = refs[0]
    assert r0["ids"][0] == (r0["prompt_ids"][-1] + 1) % VOCAB  # greedy
    a = sq.score_variant(vllm, refs, _Tok(), None)
    b = sq.score_variant(sq.Scorer(fake, "m", "llama.cpp", k=4), refs, _Tok(), None)
    assert not a["errors"] and not b["errors"] and len(a["positions"]) == len(b["positions"]) == 5 * len(refs)
    load = sq.load_positions
    s = sq.summarize(load(a), load(b), k=4)["text"]
    assert s["kl_mean"] == pytest.approx(0.0, abs=1e-9) and s["top1"] == 1.0
    assert s["ppl"] == pytest.approx(1 / 0.6) and s["ref_bounded"] == 0
    assert a["positions"][0]["ref_lp"] == pytest.approx(math.log(0.6))


def test_a_server_without_prompt_logprobs_and_a_long_prompt_are_reasons(fake):
    refs = sq.references(sq.Scorer(fake, "m", "vllm", k=4), "text", _Tok(), None, n=3)
    _Fake.logprobs = False
    rec = sq.score_variant(sq.Scorer(fake, "m", "vllm", k=4), refs, _Tok(), None)
    assert rec["positions"] == [] and "no prompt_logprobs" in rec["errors"]["text"]
    short = sq.references(sq.Scorer(fake, "m", "vllm", context=10), "text", _Tok(), None, n=16)
    assert all("over the server's context of 10" in r["error"] for r in short)
    dead = sq.references(sq.Scorer("http://127.0.0.1:9", "m", "vllm"), "text", _Tok(), None, n=3)
    assert all(r["error"].startswith("/v1/completions: URLError") for r in dead)


class _Engine:
    def __init__(self, url):
        self.base_url, self.model, self.api_key, self.info = url, "m", None, {"server": "vLLM"}


def test_runner_scores_each_family_on_its_own_16bit_reference(fake):
    """bench's hook: the first 16-bit model of a family makes the reference, its variants are scored on it, a 16-bit
    model of another family makes its own, a variant with no 16-bit model of any family ran is a reason."""
    from bench.runner import Runner, Settings

    run = Runner(Settings(models=["a", "a-q", "b", "b-q"], served_quality=True), [])
    eng = _Engine(fake)

    def one(alias, family, is16, status="ok", modality="text"):
        rec = {"alias": alias, "family": family, "is_16bit": is16, "status": status, "modality": modality}
        rec["served_quality"] = run._served_quality({"modality": modality}, rec, eng, _Tok())
        run.variants.append(rec)
        return rec["served_quality"]

    assert "no 16-bit model of its family ran" in one("x-q", "x", False)["reason"]
    assert one("a", "a", True)["baseline"] == "a" and set(run.references) == {"a"}
    assert one("a-q", "a", False)["baseline"] == "a"
    assert one("b", "b", True)["baseline"] == "b" and set(run.references) == {"a", "b"}
    assert one("b-q", "b", False)["baseline"] == "b"
    assert one("folder", None, False)["baseline"] == "a"  # no family: the first 16-bit model, as baseline_of says
    # never a VL variant on a text model's reference (a folder whose family is unknown)
    assert "no 16-bit vl model of its family ran" in one("vl-folder", None, False, modality="vl")["reason"]
    s = run._served_quality_summary()
    assert s["problems"] == [] and s["k"] == sq.K and len(s["references"]["a"]) == len(sq.prompts("text"))
    empty = Runner(Settings(models=["q"], served_quality=True), [])
    assert "no 16-bit model ran among --models" in empty._served_quality_summary()["problems"][0]


def test_tuned_vs_rtn_pairs_same_family_format_path_and_engine():
    def v(alias, iters, fam="tiny-text", fmt="gptq", path="w4a16"):
        return {"alias": alias, "family": fam, "format": fmt, "cpu_int4": path,
                "recipe": {"name": "light" if iters else "rtn", "iters": iters}}

    def r(kl, kind="vllm"):
        return {"kind": kind, "summary": {"all": {"kl_mean": kl}}}

    report = {"variants": [v("t@w4a16", 20), v("rtn@w4a16", 0), v("t@w4a8", 20, path="w4a8"),
                           v("rtn@w4a8", 0, path="w4a8"), v("vl-t", 20, fam="tiny-vl"), v("rtn-awq", 0, fmt="awq"),
                           {"alias": "tiny-text", "family": "tiny-text", "recipe": None}]}
    res = {"t@w4a16": r(0.01), "rtn@w4a16": r(0.04), "t@w4a8": r(0.03), "rtn@w4a8": r(0.02),
           "vl-t": r(0.01), "rtn-awq": r(0.05), "tiny-text": r(0.0)}
    pairs = sq.tuned_vs_rtn(report, res)
    assert [(p["tuned"], p["rtn"]) for p in pairs] == [("t@w4a16", "rtn@w4a16"), ("t@w4a8", "rtn@w4a8")]
    assert pairs[0]["ratio"] == pytest.approx(0.25) and pairs[1]["ratio"] == pytest.approx(1.5)
    assert sq.tuned_vs_rtn(report, {**res, "rtn@w4a16": {"reason": "no logprobs"}})[0]["tuned"] == "t@w4a8"
