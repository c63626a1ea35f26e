"""GGUF end to end: `python -m quantize --formats gguf` (real AutoRound, llama.cpp's converter, lint, verify with
llama.cpp) -> llama.cpp's own server (xllamacpp) through serve/engines/llamacpp.py -> serve.client / the openai
client -> stopped, nothing left running. Plus what `--engine auto` picks on this machine, served for real."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import psutil
import pytest

from core import catalog
from core.errors import UserError
from core.hardware import detect
from serve.client import chat, user_message

pytestmark = pytest.mark.e2e
pytest.importorskip("xllamacpp", reason="xllamacpp not installed (extra `llamacpp`)")
REPO = Path(__file__).resolve().parents[2]


def _quantize(base: Path, out: Path, gtype: str, *extra: str, family: str = "tiny-text") -> Path:
    cmd = [sys.executable, "-m", "quantize", "--model", str(base), "--formats", "gguf", "--gguf-type", gtype,
           "--output", str(out), *extra]
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"
    return out / (f"{family}-gguf" + ("-bf16" if gtype == "bf16" else ""))


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    base = catalog.resolve("tiny-text").path
    out = tmp_path_factory.mktemp("gguf") / "artifacts"
    return {"q4_0": _quantize(base, out, "q4_0", "--recipe", "rtn"), "bf16": _quantize(base, out, "bf16")}


@pytest.fixture(scope="module")
def vl_gguf(tmp_path_factory):
    """tiny-vl as Q4_K_M GGUF with its 16-bit vision projector (RTN: the rounding path, fast)."""
    out = tmp_path_factory.mktemp("vl-gguf") / "artifacts"
    return _quantize(catalog.resolve("tiny-vl").path, out, "q4_k_m", "--recipe", "rtn", family="tiny-vl")


def start_llamacpp(model: str, *, run_dir: Path | None = None, progress: bool = False, **opts):
    """llama.cpp's engine directly (no engine choice): plan, preflight, start."""
    import serve
    from serve.engines import get

    return serve.launch(get("llamacpp").plan(model, serve.options(**opts), detect()), run_dir=run_dir,
                        progress=progress)


def _metrics(srv) -> dict[str, float]:
    """llama.cpp's Prometheus counters (/metrics)."""
    import urllib.request

    req = urllib.request.Request(srv.base_url.removesuffix("/v1") + "/metrics",
                                 headers={"Authorization": f"Bearer {srv.api_key}"} if srv.api_key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (ln.split() for ln in lines if ln and not ln.startswith("#"))}


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("gtype,tensor_type", [("q4_0", "Q4_0"), ("bf16", "BF16")])
def test_gguf_artifact_is_complete_linted_and_verified(ggufs, gtype, tensor_type):
    from core.artifact import gguf_file as find_file
    from quantize.gguf import lint_folder, read_header

    folder = ggufs[gtype]
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
            "quantization_report.json", f"tiny-text-{gtype.upper()}.gguf"} <= files
    assert not list(folder.parent.glob(".quantize-*")), "staging folder left behind"
    h = read_header(find_file(folder))
    assert h["architecture"] == "qwen3" and h["tokenizer_pre"] == "qwen2" and h["has_chat_template"]
    assert sum(t == tensor_type for t in h["tensor_types"].values()) >= 14  # 2 layers x 7 Linears
    assert [p for p in lint_folder(folder, gtype, catalog.TEXT_ARCH, require_card=True) if p.level == "error"] == []
    rep = json.loads((folder / "quantization_report.json").read_text())
    ver = rep["verify"]
    assert ver["ok"] and ver["results"]["gguf"]["loader"].startswith("llama.cpp")
    kl, top1 = ver["results"]["gguf"]["kl_mean"], ver["results"]["gguf"]["top1"]
    if gtype == "bf16":
        assert kl < 0.01 and top1 >= 0.98  # same weights, another engine
    else:
        assert kl < 0.1 and top1 >= 0.8, (kl, top1)
        assert rep["sizes"]["artifact_bytes"] < 0.5 * ggufs["bf16"].joinpath("tiny-text-BF16.gguf").stat().st_size
    card = (folder / "README.md").read_text()
    assert "library_name: gguf" in card and f"gguf_type: {gtype}" in card and "llama.cpp" in card


def test_llamacpp_server_chats_and_stops_clean(ggufs, tmp_path):

    t0 = time.monotonic()
    srv = start_llamacpp(str(ggufs["q4_0"]), api_key="test-key", run_dir=tmp_path / "run", progress=False)
    try:
        assert srv.alive() and srv.model == "tiny-text-gguf" and srv.base_url.endswith("/v1")
        assert time.monotonic() - t0 < 120
        assert "test-key" not in " ".join(srv.argv) and "test-key" not in srv.command  # key in env, masked
        tree = [p.pid for p in srv.processes()]
        assert srv.tree_rss_bytes() > 10 * 2**20
        text, stats = chat(srv.base_url, srv.model, [user_message("What does a context manager do?")],
                           api_key=srv.api_key, max_tokens=24)
        assert text.strip() and stats.output_tokens > 0 and stats.ttft_s > 0
        c = openai.OpenAI(base_url=srv.base_url, api_key="test-key")
        r = c.chat.completions.create(model=srv.model, max_tokens=12, temperature=0.0,
                                      messages=[{"role": "user", "content": "Describe a priority queue."}])
        assert r.choices[0].message.content and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="wrong").models.list()
        # several users are decoded together (continuous batching over the slots): the server's own counters show
        # fewer llama_decode() calls than tokens generated; every answer has its forced length and the server's usage
        import threading
        from concurrent.futures import ThreadPoolExecutor

        before = _metrics(srv)
        go = threading.Barrier(3)

        def answer(k):
            go.wait()
            return chat(srv.base_url, srv.model, [user_message(f"Question {k}: what is a set?")], api_key=srv.api_key,
                        max_tokens=200, ignore_eos=True)[1]

        with ThreadPoolExecutor(3) as ex:
            runs = list(ex.map(answer, range(3)))
        assert all(st.output_tokens == 200 and st.usage_reported and st.finish_reason == "length" for st in runs), runs
        after = _metrics(srv)
        tokens = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
        decodes = after["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
        assert tokens >= 600 and decodes < 0.8 * tokens, (tokens, decodes)  # one at a time would need >= 600
        assert (tmp_path / "run" / "llamacpp.log").stat().st_size > 0
    finally:
        srv.stop()
    srv.stop()  # idempotent
    assert not srv.alive() and not _port_open(srv.port)
    assert not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_auto_engine_on_this_machine_serves_what_the_rules_say(ggufs):
    """`--engine auto` for the tiny text AWQ variant, with a local catalog holding its GGUF variant: llama.cpp on a
    CPU without AMX (and serving it works), vLLM on AMX CPUs and GPUs."""
    from serve.engine import choose_engine, gguf_variant_path

    root = ggufs["q4_0"].parent
    resolved = catalog.Resolved("tiny-text-awq", "local", "/unused", catalog.variant("tiny-text-awq"))
    hw = detect()
    c = choose_engine(resolved, hw, "auto", find_variant=lambda b, bf16: gguf_variant_path(b, bf16, root))
    print(f"\nauto on this machine: {c.engine} — {c.reason}")
    if hw.has_gpu or hw.flag("amx_tile"):
        assert c.engine == "vllm"
        return
    assert c.engine == "llamacpp" and Path(c.model) == ggufs["q4_0"]
    with start_llamacpp(c.model, progress=False) as srv:
        text, stats = chat(srv.base_url, srv.model, [user_message("Hello")], max_tokens=8)
        assert text.strip() and stats.output_tokens > 0
    # the bf16 base's GGUF twin is picked for the 16-bit request
    base = catalog.Resolved("tiny-text", "local", "/unused", catalog.variant("tiny-text"))
    c16 = choose_engine(base, hw, "auto", find_variant=lambda b, bf16: gguf_variant_path(b, bf16, root))
    assert c16.engine == "llamacpp" and Path(c16.model) == ggufs["bf16"]


def test_llamacpp_refuses_what_it_cannot_serve(vl_gguf):

    with pytest.raises(UserError) as e:
        start_llamacpp(str(catalog.resolve("tiny-text").path), progress=False)
    assert "not a GGUF model" in e.value.line() and "--formats gguf" in e.value.line()
    proj = next(vl_gguf.glob("mmproj-*.gguf"))
    with pytest.raises(UserError) as e:
        start_llamacpp(str(proj), progress=False)
    assert "vision projector, not a language model" in e.value.line()


def test_vl_gguf_artifact_has_its_16bit_projector_linted_and_verified(vl_gguf):
    """Qwen3-VL to GGUF: the language model in Q4_K_M, the vision tower + merger as a 16-bit mmproj file; lint
    checks the projector's metadata and types, verify runs it in llama.cpp's mtmd on a picture."""
    from core.artifact import gguf_file as find_file, mmproj_file as find_mmproj
    from quantize.gguf import lint_folder, read_header

    files = {p.name for p in vl_gguf.iterdir()}
    assert {"tiny-vl-Q4_K_M.gguf", "mmproj-tiny-vl-F16.gguf", "config.json", "preprocessor_config.json",
            "README.md", "quantization_report.json"} <= files
    lm, proj = read_header(find_file(vl_gguf)), read_header(find_mmproj(vl_gguf))
    assert lm["architecture"] == "qwen3vl" and lm["file_type"] == 15 and lm["has_chat_template"]
    assert not any(n.startswith("v.") for n in lm["tensor_types"])  # no vision tensor in the language model
    assert proj["architecture"] == "clip" and proj["projector_type"] == "qwen3vl_merger"
    assert set(proj["tensor_types"].values()) <= {"F16", "F32"} and "F16" in proj["tensor_types"].values()
    assert proj["projection_dim"] == lm["embedding_length"]
    assert [p for p in lint_folder(vl_gguf, "q4_k_m", catalog.VL_ARCH, require_card=True) if p.level == "error"] == []
    rep = json.loads((vl_gguf / "quantization_report.json").read_text())
    ver = rep["verify"]
    assert ver["ok"] and ver["results"]["gguf"]["kl_mean"] < 0.1
    vis = ver["vision"]
    assert vis["image_tokens"] == vis["image_tokens_transformers"] > 0 and vis["answer_tokens"] > 0
    assert rep["mmproj"]["file"] == "mmproj-tiny-vl-F16.gguf" and rep["mmproj"]["projector_type"] == "qwen3vl_merger"
    card = (vl_gguf / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "--mmproj mmproj-tiny-vl-F16.gguf" in card


def _image_prompt_tokens(base_url: str, model: str, side: int | None) -> int:
    """Prompt tokens the server counts for one `side` x `side` picture (None: no picture) and a short question."""
    import base64
    import io

    from PIL import Image

    content = [{"type": "text", "text": "Describe it."}]
    if side:
        b = io.BytesIO()
        Image.new("RGB", (side, side), (180, 40, 40)).save(b, "PNG")
        content.insert(0, {"type": "image_url",
                           "image_url": {"url": "data:image/png;base64," + base64.b64encode(b.getvalue()).decode()}})
    r = openai.OpenAI(base_url=base_url, api_key="EMPTY").chat.completions.create(
        model=model, max_tokens=1, temperature=0.0, messages=[{"role": "user", "content": content}])
    return r.usage.prompt_tokens


def _picture_tokens(srv) -> dict[int, int]:
    """Prompt tokens a picture adds, by its side in pixels (448: 196 tokens unscaled, 1024: 1024)."""
    bare = _image_prompt_tokens(srv.base_url, srv.model, None)
    return {n: _image_prompt_tokens(srv.base_url, srv.model, n) - bare for n in (448, 1024)}


def test_vl_gguf_served_by_llamacpp_answers_images(vl_gguf, tmp_path, server):
    """llama.cpp's server with the projector (mtmd) answers image chats from serve.client and the openai client;
    `--engine auto` picks it for the VL W4A16 alias on a CPU without AMX; bench measures its image scenario."""
    from serve.engine import choose_engine, gguf_variant_path
    from tests.e2e.cli_run import png_bytes

    hw = detect()
    c = choose_engine(catalog.Resolved("tiny-vl-gptq", "local", "/unused", catalog.variant("tiny-vl-gptq")), hw,
                      "auto", find_variant=lambda b, bf16: gguf_variant_path(b, bf16, vl_gguf.parent))
    print(f"\nauto for tiny-vl-gptq here: {c.engine} — {c.reason}")
    assert c.engine == ("vllm" if hw.has_gpu or hw.flag("amx_tile") else "llamacpp")
    with start_llamacpp(str(vl_gguf), progress=False) as srv:
        assert srv.argv[srv.argv.index("--mmproj") + 1] == str(find_mmproj_path(vl_gguf))
        assert srv.argv[srv.argv.index("--image-max-tokens") + 1] == "64"  # the processor's 65,536 pixels
        text, st = chat(srv.base_url, srv.model, [user_message("What is in this picture?", [png_bytes()])],
                        max_tokens=12)
        assert text and st.output_tokens > 0 and 0 < st.ttft_s <= st.total_s
        import base64

        url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
        r = openai.OpenAI(base_url=srv.base_url, api_key="EMPTY").chat.completions.create(
            model=srv.model, max_tokens=8, temperature=0.0, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe it."}]}])
        assert r.choices[0].message.content and r.usage.completion_tokens > 0
        log = Path(srv.log_path).read_text(errors="replace")
        assert "image" in log.lower(), log[-2000:]  # mtmd encoded the picture
        gguf_tokens = _picture_tokens(srv)

    # a plain openai client sending pictures larger than the budget: as many tokens per picture as vLLM's processor
    # makes (the processor's 65,536 pixels: 64 image tokens, plus the two vision markers)
    vllm_tokens = _picture_tokens(server("tiny-vl"))
    assert gguf_tokens == vllm_tokens == {448: 66, 1024: 66}, (gguf_tokens, vllm_tokens)

    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "bench", "--models", str(vl_gguf), "--concurrency", "1", "--prompts", "2",
           "--input-len", "16", "--output-len", "8", "--quality-tokens", "4", "--threads", "1", "--out", str(out),
           "--no-progress"]
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    x = rep["variants"][0]
    assert x["status"] == "ok" and x["engine"]["server"] == "llama.cpp", x.get("reason")
    # the 448 x 448 picture goes as it is: llama.cpp's server caps it at the processor's 64 tokens, as vLLM does
    assert "image_sent" not in rep["settings"]
    for scen in ("text", "image"):
        _check_forced(x["raw"][scen]["1"], x["runs"][scen]["1"], 2, 8, out / "report.md")


def _check_forced(raw: list, run: dict, n: int, n_out: int, md: Path) -> None:
    """Every request answered with exactly the forced length (llama.cpp's server honours `ignore_eos`) and the
    server's own token usage."""
    assert len(raw) == n and all(q["ok"] for q in raw), raw
    assert all(q["finish_reason"] == "length" and q["output_tokens"] == n_out for q in raw), raw
    assert run["ended_early"] == 0 and run["total_output_tokens"] == n * n_out
    assert "Ended before the forced length" not in md.read_text()


def find_mmproj_path(folder: Path) -> Path:
    from core.artifact import mmproj_file as find_mmproj

    return find_mmproj(folder).resolve()


def test_gguf_lint_rules_catch_hand_made_bad_headers():
    """The lint rules are pure functions of the header: a file whose Linears were left 16-bit, the wrong file
    type, a missing vocabulary or a quantized norm are errors."""
    from quantize.gguf import check_files, check_header, check_mmproj

    good = {"architecture": "qwen3", "file_type": 2, "has_vocab": True, "has_chat_template": True,
            "tensor_types": {**{f"blk.{i}.{n}.weight": "Q4_0" for i in range(2)
                                for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                          "ffn_down")},
                             "blk.0.attn_norm.weight": "F32", "token_embd.weight": "Q4_0", "output.weight": "Q6_K"}}
    assert check_header(good, "q4_0", catalog.TEXT_ARCH) == []
    errs = lambda h, t="q4_0": [p.message for p in check_header(h, t, catalog.TEXT_ARCH) if p.level == "error"]
    sixteen = {**good, "tensor_types": {k: ("BF16" if k.startswith("blk.") and "norm" not in k else v)
                                        for k, v in good["tensor_types"].items()}}
    assert any("not q4_0 types" in m for m in errs(sixteen))
    assert any("file_type is 2, expected 15" in m for m in errs(good, "q4_k_m"))
    assert any("vocabulary" in m for m in errs({**good, "has_vocab": False}))
    assert any("norm weights stored quantized" in m
               for m in errs({**good, "tensor_types": {**good["tensor_types"], "blk.0.attn_norm.weight": "Q4_0"}}))
    assert any("architecture" in m for m in errs({**good, "architecture": "llama"}))
    assert [p.message for p in check_files({"a.gguf", "b.gguf", "config.json", "tokenizer_config.json"})] == \
        ["expected one .gguf file, found 2"]
    # a VL artifact: one projector beside the language model, 16-bit, with the right projector type and width
    vl_files = {"m.gguf", "config.json", "tokenizer_config.json"}
    assert [p.message for p in check_files(vl_files, vl=True)] == ["expected one vision projector mmproj-*.gguf, found 0"]
    assert check_files(vl_files | {"mmproj-m-F16.gguf"}, vl=True) == []
    proj = {"architecture": "clip", "projector_type": "qwen3vl_merger", "has_vision_encoder": True, "file_type": 1,
            "projection_dim": 256, "tensor_types": {"v.blk.0.attn_q.weight": "F16", "v.blk.0.ln1.weight": "F32"}}
    lm = {"embedding_length": 256}
    assert check_mmproj(proj, lm, catalog.VL_ARCH) == []
    perrs = lambda h: [p.message for p in check_mmproj(h, lm, catalog.VL_ARCH) if p.level == "error"]
    assert any("vision tensors are quantized" in m
               for m in perrs({**proj, "tensor_types": {"v.blk.0.attn_q.weight": "Q4_K"}}))
    assert any("projector_type" in m for m in perrs({**proj, "projector_type": "qwen2vl_merger"}))
    assert any("outputs 128 values per image token" in m for m in perrs({**proj, "projection_dim": 128}))
    assert any("no vision tower" in m for m in perrs({**proj, "has_vision_encoder": False}))


def test_bench_serves_gguf_variants_with_llamacpp(ggufs, tmp_path):
    """`python -m bench` on GGUF folders: each is served by llama.cpp (through serve/llamacpp.py), measured with the
    same client and report as vLLM variants; forced output lengths hold, bytes per token come from the GGUF
    tensor table, and the Q4_0 file reads under half the bytes of the BF16 one."""
    out = tmp_path / "report"
    n_out, prompts = 8, 2
    cmd = [sys.executable, "-m", "bench", "--models", f"{ggufs['bf16']},{ggufs['q4_0']}", "--concurrency", "1",
           "--prompts", str(prompts), "--input-len", "32", "--output-len", str(n_out), "--quality-tokens", "8",
           "--threads", "1", "--out", str(out), "--no-progress"]
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    v = {Path(x["alias"]).name: x for x in rep["variants"]}
    for name in ("tiny-text-gguf-bf16", "tiny-text-gguf"):
        x = v[name]
        assert x["status"] == "ok", x["reason"]
        assert x["engine"]["server"] == "llama.cpp" and x["engine"]["threads"] == 1
        _check_forced(x["raw"]["text"]["1"], x["runs"]["text"]["1"], prompts, n_out, out / "report.md")
    rows = {Path(x["alias"]).name: x for x in rep["derived"]["rows"]}
    b16, q4 = rows["tiny-text-gguf-bf16"], rows["tiny-text-gguf"]
    assert 0 < q4["bytes_per_token"] < 0.5 * b16["bytes_per_token"]
    assert q4["x_baseline"]["decode_tok_s_bs1"] == pytest.approx(q4["decode_tok_s_bs1"] / b16["decode_tok_s_bs1"])
    assert "| llama.cpp | 1 |" in (out / "report.md").read_text()


FULL_SOAK = os.environ.get("QWEN_W4_SOAK", "").strip().lower() == "full"


@(pytest.mark.soak if FULL_SOAK else (lambda f: f))
def test_soak_through_llamacpp_with_four_users(vl_gguf, tmp_path):
    """`python -m bench.soak` against llama.cpp's server at 4 users: text and pictures (two of them larger than the
    processor's budget), streamed and not, some cancelled mid-stream; none fails, memory stays flat, the server
    still answers afterwards. `QWEN_W4_SOAK=full` (make soak) runs 200 requests."""
    n = 200 if FULL_SOAK else 36
    out = tmp_path / "soak"
    r = subprocess.run([sys.executable, "-m", "bench.soak", "--model", str(vl_gguf), "--requests", str(n),
                        "--concurrency", "4", "--out", str(out)], check=False, cwd=REPO, capture_output=True,
                       text=True, timeout=1800)
    s = json.loads((out / "soak.json").read_text())
    print("\n" + (out / "soak.md").read_text())
    assert r.returncode == 0, r.stderr[-3000:]
    assert s["failed"] == 0 and s["memory_flat"] and s["answers_after"] and s["engine"] == "llamacpp", s["errors"]
    assert set(s["modes"]) == {"stream", "plain", "cancel"} and set(s["kinds"]) == {"text", "image", "image x2"}
    assert s["requests"] == n == len(s["results"]) and s["argv"][s["argv"].index("--parallel") + 1] == "4"


def test_llamacpp_user_errors_are_one_line(ggufs, tmp_path):
    """A broken GGUF file, no slot, a taken port: one `error: ... — what to do` line each, exit non-zero, nothing
    left running."""
    import shutil

    from cli_run import assert_one_line_error, run_mod

    bad = tmp_path / "broken-gguf"
    shutil.copytree(ggufs["q4_0"], bad)
    f = next(bad.glob("*.gguf"))
    f.write_bytes(f.read_bytes()[: 4096])  # truncated: a header and nothing else
    r = run_mod("serve", "--model", str(bad), "--port", "0")
    assert_one_line_error(r, f.name, "--formats gguf")
    r = run_mod("serve", "--model", str(ggufs["q4_0"]), "--parallel", "0", "--dry-run")
    assert_one_line_error(r, "--parallel 0", "--parallel 1 or more")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_mod("serve", "--model", str(ggufs["q4_0"]), "--port", str(s.getsockname()[1]))
    assert_one_line_error(r, "port")
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "serve.engines.llamacpp_server" in " ".join(p.info["cmdline"] or []) and str(bad) in
                " ".join(p.info["cmdline"] or [])]
