"""Bad inputs across commands, each through the real entry point in its own subprocess: a non-zero exit, exactly one
`error: ...` line on stderr, no traceback. Cases test_serve.py, test_quantize.py and test_serve_args.py already
cover are not repeated here. No vLLM server is started: every case is refused (or fails) before that.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from cli_run import assert_error_last, assert_one_line_error, png_bytes, run_mod, tree_digest
from core import catalog

pytestmark = pytest.mark.e2e
MiB = 2**20


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm_for(path_part: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "vllm" in " ".join(p.info["cmdline"] or []) and path_part in " ".join(p.info["cmdline"] or [])]


# ---------------------------------------------------------------- serve.chat: images

class _Images(BaseHTTPRequestHandler):
    """/big: a 21 MiB body (streamed, never held in memory); /text: a page, not an image; /png: a real image."""

    def do_GET(self):  # http.server's name
        if self.path == "/big":
            chunk = b"\0" * MiB
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(21 * MiB))
            self.end_headers()
            try:
                for _ in range(21):
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit
            return
        body, ctype = (png_bytes(), "image/png") if self.path == "/png" else (b"<html>hello</html>", "text/html")
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def image_site():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("case", ["file-too-large", "truncated-png", "url-unreachable", "url-not-image",
                                  "url-too-large", "empty-prompt"])
def test_chat_image_and_prompt_errors(case, tmp_path, image_site):
    """Images are checked before any request: each mistake is one line, whatever server --base-url names."""
    base = f"http://127.0.0.1:{_closed_port()}/v1"  # nothing listens: a check that passed would say "cannot connect"
    prompt, image = "What is in the picture?", None
    if case == "file-too-large":
        image = tmp_path / "huge.png"
        with open(image, "wb") as f:  # sparse: 21 MiB on paper, nothing on disk
            f.write(png_bytes())
            f.truncate(21 * MiB)
        needles = ["huge.png is larger than 20 MiB", "smaller image"]
    elif case == "truncated-png":
        image = tmp_path / "cut.png"
        data = png_bytes(size=(200, 200))
        image.write_bytes(data[: len(data) // 2])
        needles = ["cut.png is not a readable image"]
    elif case == "url-unreachable":
        image = f"http://127.0.0.1:{_closed_port()}/cat.png"
        needles = [f"cannot download image {image}", "pass a local file"]
    elif case == "url-not-image":
        image = f"{image_site}/text"
        needles = [f"{image} is not a readable image"]
    elif case == "url-too-large":
        image = f"{image_site}/big"
        needles = [f"image {image} is larger than 20 MiB"]
    else:
        prompt, needles = "", ["the prompt is empty"]
    args = ["--base-url", base, *(["--image", str(image)] if image else []), prompt]
    r = run_mod("serve.chat", *args, timeout=60)
    assert_one_line_error(r, *needles)
    assert r.stdout == ""


def test_chat_url_image_reaches_the_request(image_site):
    """The control for the URL cases: a good URL image passes every check, so the next failure is the server."""
    r = run_mod("serve.chat", "--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--image",
                f"{image_site}/png", "hi", timeout=60)
    assert_one_line_error(r, "cannot connect to the server")


def test_chat_api_key_never_printed():
    secret = "sk-test-0d9e8f7a6b5c"
    r = run_mod("serve.chat", "--base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--api-key", secret, "hi",
                env={"HF_TOKEN": "hf_test_secret_3c2b1a"})
    assert_one_line_error(r, "cannot connect")
    assert secret not in r.stdout + r.stderr and "hf_test_secret" not in r.stdout + r.stderr


# ---------------------------------------------------------------- serve: weights, host/port, trust_remote_code

def _copy(artifact, alias: str, dst: Path) -> Path:
    shutil.copytree(artifact(alias), dst)
    return dst


@pytest.mark.parametrize("case", ["truncated-weights", "pickle-only", "port-out-of-range", "unknown-host"])
def test_serve_refuses_before_starting_vllm(case, tmp_path, artifact):
    args = ["--model", "tiny-text"]
    model = tmp_path / "model"
    if case == "truncated-weights":  # a copy cut short (full disk, interrupted download)
        _copy(artifact, "tiny-text", model)
        w = model / "model.safetensors"
        full = w.stat().st_size
        os.truncate(w, full // 2)
        args, needles = ["--model", str(model)], ["model.safetensors is truncated", f"of {full} bytes", "re-create"]
    elif case == "pickle-only":  # pickle weights can run code when loaded: never handed to vLLM
        _copy(artifact, "tiny-text", model)
        (model / "model.safetensors").rename(model / "pytorch_model.bin")
        args, needles = ["--model", str(model)], ["no .safetensors weights", "pytorch_model.bin is a pickle file"]
    elif case == "port-out-of-range":
        args, needles = args + ["--port", "70000"], ["--port 70000 is not a valid port"]
    else:
        args, needles = args + ["--host", "no-such-host.invalid", "--api-key", "k"], \
            ["cannot listen on host 'no-such-host.invalid'", "--host"]
    r = run_mod("serve", *args, timeout=120)
    assert_one_line_error(r, *needles)
    assert r.returncode == 2 and r.stdout == ""  # nothing printed as started
    assert not _vllm_for(str(model))


def test_serve_never_trusts_remote_code_unless_asked(tmp_path, artifact):
    """A folder whose config points at its own Python code (auto_map): serve's vLLM command has no
    --trust-remote-code; the user can add it explicitly after `--`. Secrets in the env stay out of the output."""
    model = _copy(artifact, "tiny-text", tmp_path / "remote-code")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom_config.MarkedConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    env = {"HF_TOKEN": "hf_test_secret_3c2b1a", "QWEN_W4_API_KEY": "sk-test-0d9e8f7a6b5c"}
    r = run_mod("serve", "--model", str(model), "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    assert "trust-remote-code" not in r.stdout and "trust_remote_code" not in r.stdout
    assert "hf_test_secret" not in r.stdout + r.stderr and "sk-test-0d9e8f7a6b5c" not in r.stdout + r.stderr
    assert "VLLM_API_KEY=***" in r.stdout
    r = run_mod("serve", "--model", str(model), "--dry-run", "--", "--trust-remote-code", env=env)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("--trust-remote-code"), r.stdout + r.stderr


# ---------------------------------------------------------------- quantize: weights, disk, trust_remote_code

def test_quantize_truncated_weights(tmp_path, artifact):
    model = _copy(artifact, "tiny-text", tmp_path / "cut")
    w = model / "model.safetensors"
    os.truncate(w, w.stat().st_size - 4096)  # header intact, the last tensor's bytes missing
    r = run_mod("quantize", "--model", str(model), "--formats", "gptq", "--recipe", "rtn",
                "--output", str(tmp_path / "out"))
    assert_one_line_error(r, "cannot read weights model.safetensors", "corrupt or truncated")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _file_size_limit(limit: int):
    def apply():  # in the child, before exec: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer; SIG_IGN survives exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_quantize_out_of_disk_keeps_previous_artifact(tmp_path, artifact):
    """A write that fails for lack of space (simulated: RLIMIT_FSIZE, EFBIG) while the new export is written: one
    line, the artifact from before untouched, no staging folder left, nothing in the working directory."""
    prev = artifact("tiny-text-gptq")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(prev, out / "tiny-text-gptq")
    before = tree_digest(out / "tiny-text-gptq")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # the base's weights are 6.3 MB; the tokenizer (0.3 MB) and small files fit under 1 MiB, the export does not
    r = run_mod("quantize", "--model", "tiny-text", "--formats", "gptq", "--recipe", "rtn", "--no-verify",
                "--output", str(out), "--overwrite", cwd=cwd, preexec_fn=_file_size_limit(MiB), timeout=600)
    line = assert_error_last(r, "out of disk space while writing under", str(out), "--output")
    print(f"\n{line}")
    assert tree_digest(out / "tiny-text-gptq") == before
    assert sorted(p.name for p in out.iterdir()) == ["tiny-text-gptq"]  # no .quantize-* staging folder left
    assert list(cwd.iterdir()) == []


def test_quantize_never_runs_model_code(tmp_path, artifact):
    """A base folder whose config.json points at Python code in the folder (auto_map): quantizing it must not import
    that code (AutoRound's own default is trust_remote_code=True); the run completes with the built-in class."""
    model = _copy(artifact, "tiny-text", tmp_path / "remote-code")
    marker = tmp_path / "model-code-ran"
    (model / "custom_config.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from transformers import Qwen3Config\n\n\n"
        "class MarkedConfig(Qwen3Config):\n    pass\n")
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "custom_config.MarkedConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    r = run_mod("quantize", "--model", str(model), "--formats", "gptq", "--recipe", "rtn", "--no-verify",
                "--output", str(tmp_path / "out"), cwd=tmp_path, timeout=600,
                env={"HF_MODULES_CACHE": str(tmp_path / "hf-modules")})
    assert not marker.exists(), "the model folder's Python code was imported"
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "remote-code-gptq" / "model.safetensors").is_file()
    assert catalog.artifact_root() not in (tmp_path / "out").parents
