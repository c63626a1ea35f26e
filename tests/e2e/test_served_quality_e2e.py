"""Served quality (bench/served_quality.py) against real servers: a variant scored against itself has KL ~0, text and
image positions (the session's tiny-vl vLLM server); a damaged copy of tiny-text (every Linear weight x 0.7) scores
clearly worse than tiny-text's GGUF Q4_K_M on llama.cpp; `python -m bench --quality` writes it beside the speed.

Two new vLLM servers (tiny-text and its damaged copy, shared by this module's tests) and one llama.cpp server.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import served_quality as sq
from bench.workload import default_image, load_tokenizer
from core import catalog

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
SELF_KL = 1e-3


def damage(src: Path, dst: Path, scale: float = 0.7) -> Path:
    """A copy of the model folder `src` with every Linear weight (attention, MLP, LM head) multiplied by `scale`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        for name, t in tensors.items():
            if name.endswith(("proj.weight", "lm_head.weight")) and t.dim() == 2:
                tensors[name] = (t.float() * scale).to(t.dtype)
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


def _scorer(srv, kind: str = "vllm") -> sq.Scorer:
    return sq.Scorer(srv.base_url, srv.model, kind, srv.api_key)


def _summary(base: dict, got: dict) -> dict:
    return sq.summarize(sq.load_positions(base), sq.load_positions(got))


@pytest.fixture(scope="module")
def text_servers(tmp_path_factory, artifact):
    import serve

    damaged = damage(Path(artifact("tiny-text")), tmp_path_factory.mktemp("damaged") / "tiny-text-damaged")
    with serve.start("tiny-text", "vllm", progress=False) as good, \
            serve.start(str(damaged), "vllm", progress=False) as bad:
        yield good, bad, damaged


@pytest.fixture(scope="module")
def text_refs(text_servers, artifact):
    good, _, _ = text_servers
    tok = load_tokenizer(artifact("tiny-text"))
    refs = sq.references(_scorer(good), "text", tok, None)
    assert all(not r.get("error") and len(r["ids"]) > 0 for r in refs), refs
    return tok, refs, sq.score_variant(_scorer(good), refs, tok, None)


def test_text_self_zero_damaged_worse_than_gguf(text_servers, text_refs, artifact):
    import serve

    good, bad, _ = text_servers
    tok, refs, base = text_refs
    assert not base["errors"] and len(base["positions"]) == sum(len(r["ids"]) for r in refs)
    again = _summary(base, sq.score_variant(_scorer(good), refs, tok, None))["text"]
    assert again["kl_mean"] < SELF_KL and again["kl_p95"] < SELF_KL and again["top1"] == 1.0, again
    broken = _summary(base, sq.score_variant(_scorer(bad), refs, tok, None))["text"]
    artifact("tiny-text-gguf")
    with serve.start("tiny-text-gguf", "llamacpp", progress=False) as g:
        rec = sq.score_variant(_scorer(g, "llama.cpp"), refs, tok, None)
    assert not rec["errors"], rec["errors"]
    q4 = _summary(base, rec)["text"]
    assert q4["positions"] == again["positions"]
    assert broken["kl_mean"] > 0.05 and broken["kl_mean"] > 3 * q4["kl_mean"], (broken, q4)
    assert broken["top1"] < q4["top1"] and broken["ppl"] > q4["ppl"], (broken, q4)


def test_vl_self_zero_on_text_and_image_positions(server, artifact):
    """tiny-vl is trained on pictures (core/tiny_scenes): scored against itself it is ~0 on both splits; given
    another picture than its reference's, its image positions move and its text positions do not."""
    from quantize.verify import test_image

    srv = server("tiny-vl")
    tok, img = load_tokenizer(artifact("tiny-vl")), default_image()
    refs = sq.references(_scorer(srv), "vl", tok, img)
    assert all(not r.get("error") for r in refs), refs
    base = sq.score_variant(_scorer(srv), refs, tok, img)
    assert not base["errors"], base["errors"]
    s = _summary(base, sq.score_variant(_scorer(srv), refs, tok, img))
    for split in ("text", "image"):
        assert s[split]["positions"] >= 16 and s[split]["kl_mean"] < SELF_KL and s[split]["top1"] == 1.0, s
    swapped = test_image().resize(img.size)  # another scene, the same number of image tokens
    other = _summary(base, sq.score_variant(_scorer(srv), refs, tok, swapped))
    assert other["text"]["kl_mean"] < SELF_KL, other["text"]
    # 600 training steps ground the "Describe" answers (background, shape, colour) more than the other two prompts:
    # a few positions move far, the mean clearly (measured: max 0.08, mean 0.004 against a self score of ~1e-6)
    assert other["image"]["kl_max"] > 0.02 and other["image"]["kl_mean"] > max(1e-3, 20 * s["image"]["kl_mean"]), \
        (other["image"], s["image"])


def test_vl_gguf_text_and_image_positions_on_llamacpp(server, artifact):
    """A VL GGUF on llama.cpp (with its projector: token-id prompts refused) is scored on text positions too,
    through the chat endpoint with the reference prefix as an assistant prefill; both splits stay close to vLLM's
    16-bit model."""
    import serve

    srv = server("tiny-vl")
    tok, img = load_tokenizer(artifact("tiny-vl")), default_image()
    refs = sq.references(_scorer(srv), "vl", tok, img)
    base = sq.score_variant(_scorer(srv), refs, tok, img)
    artifact("tiny-vl-gguf")
    with serve.start("tiny-vl-gguf", "llamacpp", progress=False) as g:
        rec = sq.score_variant(sq.Scorer(g.base_url, g.model, "llama.cpp", g.api_key, chat_prefill=True), refs, tok,
                               img)
    assert not rec["errors"], rec["errors"]
    assert rec["notes"] and "prefill" in rec["notes"][0]
    s = _summary(base, rec)
    for split in ("text", "image"):
        assert s[split]["positions"] >= 16 and s[split]["kl_mean"] < 0.05 and s[split]["top1"] > 0.8, s


def test_bench_quality_report(text_servers, artifact, tmp_path):
    good, bad, damaged = text_servers
    # the same model by its folder (a second 16-bit variant, no family: baseline_of gives it the first 16-bit model)
    copy = str(artifact("tiny-text"))
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "bench", "--models", f"tiny-text,{copy},{damaged}", "--endpoint",
           f"tiny-text={good.base_url},{copy}={good.base_url},{damaged}={bad.base_url}", "--quality",
           "--concurrency", "1", "--prompts", "1", "--input-len", "16", "--output-len", "4", "--quality-tokens", "4",
           "--quality-prompts", "1", "--no-progress", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert [v["alias"] for v in rep["variants"]] == ["tiny-text", copy, str(damaged)]
    sqd = rep["derived"]["served_quality"]
    assert sqd[copy]["baseline"] == "tiny-text" and sqd[str(damaged)]["baseline"] == "tiny-text"
    assert sqd["tiny-text"]["summary"]["text"]["kl_mean"] == 0.0
    assert sqd[copy]["summary"]["text"]["kl_mean"] < SELF_KL
    assert sqd[str(damaged)]["summary"]["text"]["kl_mean"] > 0.05
    assert sqd[str(damaged)]["summary"]["image"] is None  # a text model: no image positions
    md = (out / "report.md").read_text()
    assert "## Served quality: teacher-forced vs the 16-bit model" in md and "KL vs 16-bit, text / image" in md
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rep["served_quality"]["k"] == sq.K and rep["served_quality"]["problems"] == []
    assert catalog.resolve("tiny-text").path.is_dir()
