"""serve.client's streaming against a loopback server that streams OpenAI chat chunks on a script.

The real servers are tested end to end (tests/e2e); this scripted one causes what they cannot be made to do on
cue: hold a token's text back (a partial UTF-8 character), pause between chunks, or stop mid-answer.
"""
from __future__ import annotations

import http.server
import json
import threading
import time
from typing import ClassVar

import pytest

from core.errors import UserError
from serve.client import chat, user_message


def _chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _Scripted(http.server.BaseHTTPRequestHandler):
    script: ClassVar[list] = []  # (seconds to wait, bytes to send) or "cut" (close the socket without the end)

    def do_POST(self):  # http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for step in self.script:
            if step == "cut":
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            wait, data = step
            time.sleep(wait)
            self.wfile.write(data)
            self.wfile.flush()

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def run(script):
        _Scripted.script = script
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield run
    srv.shutdown()


USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_ttft_is_the_first_token_even_when_its_text_is_held_back(scripted):
    # first token at 0.2 s (role chunk, no text: vLLM holds a partial UTF-8 character), all text at 1.2 s
    url = scripted([(0.2, _chunk({"role": "assistant", "content": ""})),
                    (1.0, _chunk({"content": "héllo"})),
                    (0.0, _chunk({"content": "!"}, finish="length")),
                    (0.0, _chunk(usage=USAGE)), (0.0, b"data: [DONE]\n\n")])
    text, st = chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)
    assert text == "héllo!"
    assert 0.15 < st.ttft_s < 0.9 < st.total_s, st
    assert st.output_tokens == 4 and st.prompt_tokens == 5 and st.finish_reason == "length"
    # the held-back time is decode time: the gaps add up to total - TTFT
    assert len(st.itl_s) == 2 and sum(st.itl_s) == pytest.approx(st.total_s - st.ttft_s, abs=0.05)
    assert st.tokens_per_s == pytest.approx(3 / (st.total_s - st.ttft_s))


def test_a_server_that_stops_mid_answer_is_one_line(scripted):
    url = scripted([(0.0, _chunk({"role": "assistant", "content": ""})),
                    (0.0, _chunk({"content": "partial"})), "cut"])
    with pytest.raises(UserError) as e:
        chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)
    line = e.value.line()
    assert "stopped mid-answer (after 1 chunks)" in line and "\n" not in line, line


def test_a_stream_that_ends_without_its_last_chunk_is_a_cut(scripted):
    # a clean end of the HTTP body, but no finish_reason and no usage: the answer is incomplete
    url = scripted([(0.0, _chunk({"role": "assistant", "content": ""})), (0.0, _chunk({"content": "par"})),
                    (0.0, b"data: [DONE]\n\n")])
    with pytest.raises(UserError, match="stopped mid-answer"):
        chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)


def test_a_cut_before_any_chunk_is_not_called_mid_answer(scripted):
    url = scripted(["cut"])
    with pytest.raises(UserError) as e:
        chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)
    assert "accepted the request but sent no answer" in e.value.line()


def test_without_usage_the_text_chunks_are_counted_and_said(scripted):
    # a server that streams no usage (both of this project's engines send it): the client counts text chunks, a lower
    # bound (one chunk can carry two tokens whose bytes are UTF-8 only together), and says it did
    url = scripted([(0.0, _chunk({"role": "assistant", "content": ""})), (0.0, _chunk({"content": "é"})),
                    (0.0, _chunk({"content": "ab"}, finish="length")), (0.0, b"data: [DONE]\n\n")])
    text, st = chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)
    assert text == "éab" and st.output_tokens == 2 and not st.usage_reported and st.finish_reason == "length"
    url = scripted([(0.0, _chunk({"role": "assistant", "content": ""})), (0.0, _chunk({"content": "ok"})),
                    (0.0, _chunk({"content": "."}, finish="stop")), (0.0, b"data: [DONE]\n\n")])
    _, st = chat(url, "m", [user_message("hi")], max_tokens=4, timeout=10)
    assert st.output_tokens == 2 and st.finish_reason == "stop"  # ended early: the chunks are all we know
