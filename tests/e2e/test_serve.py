"""`python -m serve`, `python -m serve.chat` and serve.client against real vLLM CPU servers.

Servers: tiny-vl bf16 through the shared `server` fixture, tiny-text bf16 through the real
`python -m serve` CLI (one start covers ready output, chats, a request cut mid-answer and SIGTERM).
W4A16 formats are served where this machine's vLLM has the int4 kernel and refused (one line,
no process) where it has not. Process-table checks use psutil on the exact process tree.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from cli_run import assert_one_line_error, png_bytes, run_mod
from core import catalog
from core.hardware import detect

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
W4_OK, W4_WHY = detect().w4a16_serving
START_TIMEOUT_S = 600


def vllm_procs_for(path_part: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "vllm" in cmd and path_part in cmd:
            out.append(p)
    return out


def assert_all_gone(procs: list[psutil.Process], timeout: float = 30) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


# ---------------------------------------------------------------- no server needed

def test_dry_run_prints_cpu_command(artifact):
    path = artifact("tiny-vl")
    r = run_mod("serve", "--model", "tiny-vl", "--dry-run", "--port", "8123")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert line.startswith("$ ") and "-m vllm.entrypoints.openai.api_server" in line
    for part in (f"--model {path}", "--served-model-name tiny-vl", "--host 127.0.0.1", "--port 8123",
                 "--limit-mm-per-prompt '{\"image\":2,\"video\":0}'", "--max-model-len 2048"):
        assert part in line, part
    if not detect().has_gpu:
        assert "--dtype bfloat16" in line and "--enforce-eager" in line and "VLLM_CPU_KVCACHE_SPACE=" in line
    assert "--quantization" not in line


def test_dry_run_plans_gpu_command_for_published_model():
    r = run_mod("serve", "--model", "vl-gptq", "--device", "cuda", "--dry-run", "-tp", "2",
                "--host", "0.0.0.0", "--api-key", "s3cr3t-key", "--", "--max-num-seqs", "16")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    for part in ("--model Vishva007/Qwen3-VL-8B-Instruct-W4A16-AutoRound-GPTQ", "--served-model-name vl-gptq",
                 "--gpu-memory-utilization 0.9", "--tensor-parallel-size 2", "--max-model-len 8192",
                 "VLLM_API_KEY=***", "--max-num-seqs 16"):
        assert part in line, part
    assert "--quantization" not in line and "s3cr3t-key" not in line and "--enforce-eager" not in line


@pytest.mark.parametrize("case", ["unknown-alias", "missing-path", "corrupt-config", "no-model", "public-no-key",
                                  "hub-offline", "too-many-gpus", "port-in-use", "engine-without-vllm"])
def test_bad_inputs_one_line(case, tmp_path, artifact):
    args, env, needles = [], {}, []
    listener = None
    if case == "unknown-alias":
        args, needles = ["--model", "no-such-model"], ["unknown model alias 'no-such-model'", "--list"]
    elif case == "missing-path":
        args, needles = ["--model", str(tmp_path / "nowhere") + "/"], ["no such model folder"]
    elif case == "corrupt-config":
        bad = tmp_path / "broken"
        shutil.copytree(artifact("tiny-text"), bad)
        (bad / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], ')
        args, needles = ["--model", str(bad)], ["config.json is not valid JSON"]
    elif case == "no-model":
        needles = ["--model is required"]
    elif case == "public-no-key":
        args, needles = ["--model", "tiny-vl", "--host", "0.0.0.0"], ["no API key", "--api-key"]
        env = {"QWEN_W4_API_KEY": ""}
    elif case == "hub-offline":
        hub_id = "qwen-w4-tests/never-downloaded"  # a Hub id no cache holds
        args, env, needles = ["--model", hub_id], {"HF_HUB_OFFLINE": "1"}, [f"'{hub_id}' is not in the local Hugging"]
    elif case == "too-many-gpus":
        args, needles = ["--model", "tiny-vl", "--tensor-parallel-size", "64"], ["GPU"]
    elif case == "engine-without-vllm":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
        py = tmp_path / "venv" / "bin" / "python"
        args, needles = ["--model", "tiny-vl", "--vllm-python", str(py)], [f"vLLM is not installed in {py}"]
    elif case == "port-in-use":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        args, needles = ["--model", "tiny-vl", "--port", str(port)], [f"port {port}", "--port"]
    try:
        r = run_mod("serve", *args, env=env)
    finally:
        if listener:
            listener.close()
    assert_one_line_error(r, *needles)
    assert r.returncode == 2 and r.stdout == ""  # refused before any command was printed or started


def test_chat_cli_errors(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_mod("serve.chat", "--base-url", f"http://127.0.0.1:{port}/v1", "hello")
    assert_one_line_error(r, "cannot connect", "python -m serve")
    (tmp_path / "notes.txt").write_text("not an image")
    r = run_mod("serve.chat", "--image", str(tmp_path / "notes.txt"), "hello")
    assert_one_line_error(r, "not a readable image")


# ---------------------------------------------------------------- tiny-vl bf16 (shared server)

def test_vl_image_chat(server):
    from serve.client import chat, image_part, user_message

    srv = server("tiny-vl")
    assert srv.alive() and srv.base_url.startswith("http://127.0.0.1:") and srv.model == "tiny-vl"
    assert srv.log_path.is_file() and srv.tree_rss_bytes() > 100 * 2**20
    text, stats = chat(srv.base_url, srv.model, [user_message("What colour is this?", [png_bytes()])],
                       api_key=srv.api_key, max_tokens=24)
    assert text.strip() and stats.output_tokens > 0 and stats.usage_reported
    _, plain = chat(srv.base_url, srv.model, [user_message("What colour is this?")], api_key=srv.api_key,
                    max_tokens=4)
    assert stats.prompt_tokens > plain.prompt_tokens + 3  # the image's tokens reached the model
    two, st2 = chat(srv.base_url, srv.model,
                    [user_message("What colour is this?", [image_part(png_bytes()), png_bytes((0, 0, 255), (64, 64))])],
                    api_key=srv.api_key, max_tokens=8)
    assert two and st2.prompt_tokens > stats.prompt_tokens


def test_vl_stream_events_and_stats(server):
    from serve.client import stream_chat, user_message

    srv = server("tiny-vl")
    events = list(stream_chat(srv.base_url, srv.model, [user_message("Count.", [png_bytes()])],
                              api_key=srv.api_key, max_tokens=32, ignore_eos=True))
    *chunks, last = events
    assert chunks and all(not e.done for e in chunks) and last.done and last.stats
    assert "".join(e.delta for e in chunks) == last.text and last.text
    st = last.stats
    assert st.output_tokens == 32 and st.finish_reason == "length"  # ignore_eos: exactly max_tokens
    assert 0 < st.ttft_s <= st.total_s and st.tokens_per_s > 0 and st.prompt_tokens > 0
    # one gap per choice chunk after the first (vLLM sends one per token, with or without text, and may send the
    # finish on a chunk of its own)
    assert len(chunks) <= len(st.itl_s) <= st.output_tokens + 1 and all(g >= 0 for g in st.itl_s)


# Agreement with transformers, per CPU path (serve.args.cpu_agreement says which path is exact). Where it is not,
# every served token must still be transformers' argmax within MARGIN nats under teacher forcing (a near-tie that
# summation order can flip) and vLLM's logprob of it within LOGPROB_TOL of transformers'. Measured on an AMX CPU
# (2026-12-03, tiny-vl, 12 tokens): margin <= 0.0085 and |dlogprob| <= 0.0121 on every path (bf16: margin 0),
# where this random model's top-1 leads its second token by 0.004-0.13 and its median token by ~1.1 nats.
MARGIN = {"bf16": 0.03, "w4a16": 0.03, "w4a8": 0.1}
LOGPROB_TOL = {"bf16": 0.03, "w4a16": 0.03, "w4a8": 0.1}
PROMPT = "Describe the picture."


def agreement(srv, model, proc, img, n: int = 12) -> dict:
    """vLLM's greedy tokens and logprobs for an image prompt, against transformers teacher-forced on the same
    tokens, and transformers' own greedy tokens."""
    import torch
    from openai import OpenAI

    from serve.client import user_message

    r = OpenAI(base_url=srv.base_url, api_key=srv.api_key or "EMPTY", max_retries=0).chat.completions.create(
        model=srv.model, messages=[user_message(PROMPT, [img])], max_tokens=n, temperature=0.0, logprobs=True,
        extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    content = r.choices[0].logprobs.content
    served = [int(t.token.split(":", 1)[1]) for t in content]
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
                                    add_generation_prompt=True)
    inputs = proc(text=[text], images=[img], return_tensors="pt")
    plen = inputs["input_ids"].shape[1]
    assert r.usage.prompt_tokens == plen  # same prompt, image tokens included
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=n, do_sample=False)[0, plen:].tolist()
        # per-token inputs (ids, mask, the processor's token-type ids) grow by the served tokens: text tokens
        extra = torch.tensor([served])
        forced = {k: (torch.cat([v, extra if k == "input_ids" else torch.full_like(extra, int(k == "attention_mask"),
                                                                                 dtype=v.dtype)], dim=1)
                      if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == plen else v)
                  for k, v in inputs.items()}
        lp = torch.log_softmax(model(**forced).logits[0, plen - 1:-1].float(), dim=-1)
    got = lp[torch.arange(n), torch.tensor(served)]
    return {"served": served, "reference": ref,
            "margin": (lp.max(dim=-1).values - got).tolist(),  # 0 where the served token is transformers' argmax
            "logprob_diff": [abs(t.logprob - float(g)) for t, g in zip(content, got)]}


def real_cpu():
    """This CPU as vLLM's kernels see it: QWEN_W4_HIDE_CPU_FLAGS changes what serve plans, not what vLLM runs."""
    import dataclasses

    from core.hardware import CPU_FLAGS, _cpuinfo

    return dataclasses.replace(detect(), cpu_flags=tuple(f for f in CPU_FLAGS if f in _cpuinfo()[1]))


def assert_agrees(a: dict, path: str, fmt: str | None = None) -> None:
    from serve.args import cpu_agreement

    exact, why = cpu_agreement(real_cpu(), None if path == "bf16" else path, fmt)
    print(f"[agreement {path}] exact={exact} equal={a['served'] == a['reference']} "
          f"max margin {max(a['margin']):.4f} max |dlogprob| {max(a['logprob_diff']):.4f} ({why})")
    if exact:
        assert a["served"] == a["reference"]
    assert max(a["margin"]) <= MARGIN[path], a
    assert max(a["logprob_diff"]) <= LOGPROB_TOL[path], a


def test_vl_greedy_agrees_with_transformers(server, artifact):
    """vLLM's greedy tokens for an image prompt: equal to transformers' where the path is exact, else transformers'
    argmax within a near-tie margin, with logprobs that agree."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    srv = server("tiny-vl")
    path = artifact("tiny-vl")
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.bfloat16)
    assert_agrees(agreement(srv, model, proc, Image.new("RGB", (96, 64), (220, 30, 30))), "bf16")


def test_chat_cli_against_server(server, tmp_path):
    srv = server("tiny-vl")
    img = tmp_path / "red.png"
    img.write_bytes(png_bytes())
    r = run_mod("serve.chat", "--base-url", srv.base_url, "--model", "tiny-vl", "--image", str(img),
                "--max-tokens", "16", "What is in the picture?", env={"QWEN_W4_API_KEY": srv.api_key or ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "TTFT" in r.stderr and "tokens/s" in r.stderr and "16 tokens" in r.stderr
    r = run_mod("serve.chat", "--base-url", srv.base_url, "--model", "not-served", "hi")
    assert_one_line_error(r, "does not serve model 'not-served'")


# ---------------------------------------------------------------- tiny-text bf16 through the real CLI

class LineReader:
    """Lines of a child's stream, read by a thread (select() on a buffered text pipe misses lines)."""

    def __init__(self, stream):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, needle: str, timeout: float) -> list[str]:
        got, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            got.append(line)
            self.seen.append(line)
            if needle in line:
                return got
        raise AssertionError(f"no {needle!r} within {timeout} s:\n" + "\n".join(self.seen))

    def rest(self, timeout: float = 10) -> str:
        out = []
        with contextlib.suppress(queue.Empty):
            while (line := self.lines.get(timeout=timeout)) is not None:
                out.append(line)
        return "\n".join(out)


def test_cli_serves_chats_and_stops_on_sigterm(artifact):
    """`python -m serve --model tiny-text` with an API key from the env: command (key masked), ready line,
    snippet; chats with and without the key; SIGTERM while an answer streams: serve exits 0, the client ends
    cleanly (the answer completed, or one line saying it was cut); the whole vLLM tree is gone afterwards."""
    from serve.client import chat, user_message
    from serve.process import free_port

    artifact("tiny-text")
    port = free_port()
    key = "test-key-5f3a9c"
    # a long context, so the answer cut by SIGTERM below is still being generated (tiny-text decodes ~700 tokens/s)
    proc = subprocess.Popen([sys.executable, "-m", "serve", "--model", "tiny-text", "--engine", "vllm", "--port",
                             str(port), "--max-model-len", "8192"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "QWEN_W4_API_KEY": key})
    tree: list[psutil.Process] = []
    stdout, stderr = LineReader(proc.stdout), LineReader(proc.stderr)
    try:
        out = stdout.until("ready:", START_TIMEOUT_S)
        assert out[0].startswith("$ ") and f"--port {port}" in out[0] and "--served-model-name tiny-text" in out[0]
        base = f"http://127.0.0.1:{port}/v1"
        assert any(ln.startswith("ready: " + base) for ln in out)
        snippet = stdout.until("chat.completions.create", 10)
        assert any("from openai import OpenAI" in ln for ln in snippet)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert any("vllm" in " ".join(p.cmdline()) for p in tree[1:])
        assert key not in "\n".join(out + snippet) and "VLLM_API_KEY=***" in out[0]
        assert not any(key in " ".join(p.cmdline()) for p in tree)  # not in the process table either
        log = Path(out[1].split("log: ", 1)[1])
        assert key not in (log.parent / "command.txt").read_text() and key not in log.read_text()

        text, stats = chat(base, "tiny-text", [user_message("Explain: Return the absolute value.")], api_key=key,
                           max_tokens=24)
        assert text.strip() and stats.output_tokens > 0 and stats.prompt_tokens > 0
        r = run_mod("serve.chat", "--base-url", base, "hello", env={"QWEN_W4_API_KEY": "wrong"})
        assert_one_line_error(r, "rejected the API key")

        # a long answer, cut by SIGTERM to `python -m serve` while it streams
        long = subprocess.Popen([sys.executable, "-m", "serve.chat", "--base-url", base, "--max-tokens", "7500",
                                 "--ignore-eos", "Tell me a long story."], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "QWEN_W4_API_KEY": key})
        first = long.stdout.read(1)
        assert first, long.stderr.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out_long, err = long.communicate(timeout=60)
        # vLLM may finish streaming what it has generated while it shuts down (a tiny model generates faster than
        # the client reads); otherwise the client gets one line saying the answer was cut
        if long.returncode == 0:
            assert out_long.strip() and "tokens/s" in err and "Traceback" not in err
        else:
            assert_one_line_error(subprocess.CompletedProcess([], long.returncode, "", err), "mid-answer")
        assert "stopped" in stderr.rest()
        assert_all_gone(tree)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass


def test_cli_reports_vllm_dying_at_start(artifact, tmp_path):
    """vLLM (run by another Python: --vllm-python) exits while starting: the CLI shows its log's last
    lines, one error line with the likely cause and the log path, exits 1, and leaves no process."""
    engine = tmp_path / "other-env-python"
    engine.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/engine-calls\nexec {sys.executable} "$@"\n')
    engine.chmod(0o755)
    bad = tmp_path / "short-context"
    shutil.copytree(artifact("tiny-text"), bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["max_position_embeddings"] = 64  # vLLM refuses --max-model-len 2048 for it
    (bad / "config.json").write_text(json.dumps(cfg))
    r = run_mod("serve", "--model", str(bad), "--port", "0", "--max-model-len", "2048",
                "--vllm-python", str(engine), timeout=START_TIMEOUT_S)
    assert r.returncode == 1, r.stderr
    assert "-m vllm.entrypoints.openai.api_server" in (tmp_path / "engine-calls").read_text()
    *context, last = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert last.startswith("error: vLLM exited") and "context length" in last and "full log: " in last
    assert "last lines of the server's log:" in context and any("max_model_len" in ln for ln in context)
    assert Path(last.rsplit("full log: ", 1)[1]).is_file()
    assert "Traceback" not in last
    assert not vllm_procs_for(str(bad))


# ---------------------------------------------------------------- W4A16 formats

@pytest.mark.parametrize("fmt", ["gptq", "awq", "autoround"])
def test_w4a16_formats(fmt, artifact, server):
    alias = f"tiny-vl-{fmt}"
    path = artifact(alias)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == catalog.FORMATS[fmt].quant_method
    if W4_OK:  # this machine's vLLM has the int4 kernel: serve it and chat with an image
        from serve.args import cpu_int4, model_info
        from serve.client import chat, user_message
        from serve.vllm_plugin import LOG_LINE

        srv = server(alias)
        text, stats = chat(srv.base_url, srv.model, [user_message("What colour is this?", [png_bytes()])],
                           api_key=srv.api_key, max_tokens=16)
        assert text.strip() and stats.output_tokens > 0 and stats.prompt_tokens > 16
        # serve's CPU int4 path for GPTQ/AWQ: W4A8 where the CPU has VNNI (the plugin says so in vLLM's log), else
        # wna16; AutoRound checkpoints (vLLM's `inc`) run AutoRound's own kernel (auto-round-lib) on CPU instead
        log = srv.log_path.read_text()
        path = cpu_int4(model_info(catalog.resolve(alias)), detect())
        assert (LOG_LINE in log) == (path == "w4a8" and not detect().flag("amx_tile") and fmt != "autoround")
        if fmt == "autoround" and not detect().has_gpu:
            assert "Successfully loaded auto_round_kernel" in log
    else:  # refused before anything starts, with the reason and what to do
        r = run_mod("serve", "--model", alias, "--engine", "vllm", "--port", "0")
        line = assert_one_line_error(r, f"W4A16 checkpoint '{alias}'", "AVX-512", "bf16 variant (tiny-vl)")
        assert W4_WHY in line
        assert r.stdout == ""
        assert not vllm_procs_for(str(path))


@pytest.mark.parametrize("path", ["w4a16", "w4a8"])
@pytest.mark.parametrize("fmt", ["gptq", "awq", "autoround"])
def test_w4a16_greedy_agrees_with_transformers(fmt, path, artifact, server):
    """Each CPU int4 path (`--cpu-int4 w4a16|w4a8`), greedy tokens for an image prompt against transformers on the
    same artifact (reloaded the way quantize verifies it: AutoRound's kernels for GPTQ and AutoRound, the packed AWQ
    weights dequantized for AWQ): equal where serve.args.cpu_agreement says the path is exact, else within that
    path's margin. AutoRound checkpoints run AutoRound's own kernel whatever --cpu-int4 says: one path."""
    if not W4_OK:
        pytest.skip(f"this machine's vLLM cannot serve W4A16: {W4_WHY}")
    if detect().has_gpu:
        pytest.skip("GPU: --cpu-int4 does not apply")
    if fmt == "autoround" and path == "w4a8":
        pytest.skip("AutoRound checkpoints run AutoRound's own CPU kernel: --cpu-int4 does not apply")
    from PIL import Image
    from transformers import AutoProcessor

    from quantize.verify import load_export
    from serve.args import cpu_int4, model_info

    alias = f"tiny-vl-{fmt}"
    artifact(alias)
    if path == "w4a8" and not detect().w4a8_kernel[0]:  # e.g. AVX-512 VNNI without BF16: refused before start
        r = run_mod("serve", "--model", alias, "--engine", "vllm", "--cpu-int4", "w4a8", "--dry-run")
        assert_one_line_error(r, "--cpu-int4 w4a8 cannot run here", "no W4A8 kernel", "--cpu-int4 w4a16")
        return
    auto = cpu_int4(model_info(catalog.resolve(alias)), detect())
    # the default server (test_w4a16_formats') where serve's own choice is this path, or AutoRound's single one
    srv = server(alias) if fmt == "autoround" or path == auto else server(alias, cpu_int4=path)
    proc = AutoProcessor.from_pretrained(artifact(alias))
    model, _ = load_export(artifact(alias), fmt, "vl", "cpu", base_dir=artifact("tiny-vl"))
    a = agreement(srv, model, proc, Image.new("RGB", (96, 64), (220, 30, 30)))
    assert_agrees(a, "w4a16" if fmt == "autoround" else path, fmt)
