"""The Gradio page: image chat with one model, or the same chat sent to two models side by side.

`build_app(targets)` makes the Blocks; each `Target` is a running OpenAI-compatible server (started by
`python -m demo` through `serve`, or given as an endpoint). Every request goes through
`serve.client.stream_chat`; this module only shapes messages and the page.

Page contract (what the browser test relies on): the input is `#demo-input`, the chats are `#chat-0`
(and `#chat-1` in compare mode), problems are shown in `#demo-status`, and every finished answer ends
with a speed line "<variant> · first token N ms · N tokens/s · N tokens in N s".
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import UserError
from demo.examples.make_examples import paths as example_paths
from serve.args import ServeOptions
from serve.client import ChatStats, image_part, stream_chat

if TYPE_CHECKING:
    import gradio as gr  # annotations only; imported where the page is built

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULT_QUESTION = "Describe this image."
PENDING = "…"
UI_REFRESH_S = 0.08  # at most ~12 page updates a second while tokens stream
POLL_S = 0.25  # longest the page handler waits without yielding (so a stop takes effect at once)


@dataclass
class Target:
    """One model the page talks to."""

    label: str  # shown above its chat and in its speed lines (the variant name)
    base_url: str  # http://HOST:PORT/v1
    model: str | None  # served model name; None: ask the server
    api_key: str | None = None
    note: str = ""  # e.g. "W4A16 (gptq)" or "16-bit"
    accepts_images: bool = True


@dataclass
class Settings:
    max_tokens: int = 256
    temperature: float = 0.0
    max_image_bytes: int = 10 * 2**20
    max_images: int = ServeOptions.images_per_prompt  # per request: what serve lets vLLM accept
    history_turns: int = 6  # earlier turns sent with each question
    timeout_s: float = 120.0  # per request: a stuck server ends in an error, not a spinner
    title: str = "Qwen W4A16 image chat"


@dataclass
class _Outcome:
    text: str = ""
    stats: ChatStats | None = None
    error: str | None = None
    done: bool = False


# ---------------------------------------------------------------- pure helpers (no Gradio)

def speed_line(label: str, stats: ChatStats) -> str:
    return (f"{label} · first token {stats.ttft_s * 1000:.0f} ms · {stats.tokens_per_s:.1f} tokens/s · "
            f"{stats.output_tokens} tokens in {stats.total_s:.2f} s")


def display_name(path: str | Path) -> str:
    """What the user called the file (Gradio keeps the original name as the last path part)."""
    return Path(path).name


def load_images(files: list[str], settings: Settings) -> tuple[list[dict], list[str], list[str]]:
    """Uploaded files -> (image parts, the files that are fine, one line per rejected file)."""
    parts, ok, errors = [], [], []
    for f in files:
        name = display_name(f)
        try:
            size = Path(f).stat().st_size
            if size > settings.max_image_bytes:
                raise UserError(f"{name} is {size / 2**20:.1f} MiB, more than the "
                                f"{settings.max_image_bytes / 2**20:g} MiB limit", "send a smaller image")
            part = image_part(f, max_bytes=settings.max_image_bytes)
        except UserError as e:
            errors.append(f"error: {e.what.replace(str(f), name)}" + (f" — {e.todo}" if e.todo else ""))
            continue
        except Exception as e:  # noqa: BLE001 - e.g. PIL's DecompressionBombError: still the user's file
            errors.append(f"error: {name} is not a usable image ({type(e).__name__}) — "
                          "send a PNG, JPEG, WebP or GIF file")
            continue
        parts.append(part)
        ok.append(f)
    return parts, ok, errors


def request_messages(history: list[dict], user: dict, settings: Settings) -> list[dict]:
    """The messages to send: the last `history_turns` turns and this one, with at most `max_images` images
    (the newest kept; older ones become a short text note so the turn still reads right)."""
    keep = history[-2 * settings.history_turns:] if settings.history_turns > 0 else []
    msgs = [*keep, user]
    budget = settings.max_images
    out: list[dict] = []
    for m in reversed(msgs):
        if m["role"] == "user" and isinstance(m["content"], list):
            content = []
            for part in reversed(m["content"]):
                if part.get("type") == "image_url":
                    if budget > 0:
                        budget -= 1
                        content.append(part)
                    else:
                        content.append({"type": "text", "text": "(an earlier image, not resent) "})
                else:
                    content.append(part)
            m = {**m, "content": list(reversed(content))}
        out.append(m)
    return list(reversed(out))


def _stream_into(target: Target, messages: list[dict], settings: Settings, idx: int, q: queue.Queue,
                 cancel: threading.Event) -> None:
    """Worker thread: stream one answer, putting (idx, _Outcome) snapshots on q."""
    out = _Outcome()
    try:
        for ev in stream_chat(target.base_url, target.model, messages, api_key=target.api_key,
                              max_tokens=settings.max_tokens, temperature=settings.temperature,
                              timeout=settings.timeout_s):
            if cancel.is_set():
                out.error = "stopped"
                break
            out.text = ev.text
            if ev.done:
                out.stats = ev.stats
            q.put((idx, _Outcome(out.text, out.stats)))
    except UserError as e:
        out.error = e.line()
    except Exception as e:  # noqa: BLE001 - anything else still ends this answer with a message
        out.error = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    out.done = True
    q.put((idx, out))


def _answer_text(target: Target, o: _Outcome) -> str:
    if o.error:
        shown = o.text + "\n\n" if o.text else ""
        return f"{shown}⚠️ {o.error}"
    if o.done and o.stats is not None:
        body = o.text if o.text.strip() else "(empty answer)"
        return f"{body}\n\n*{speed_line(target.label, o.stats)}*"
    return (o.text + " " + PENDING) if o.text else PENDING


def mark_stopped(chat: list[dict] | None) -> list[dict]:
    """After the stop button: an answer still marked pending ends with "(stopped)" instead."""
    chat = list(chat or [])
    if not chat or chat[-1].get("role") != "assistant":
        return chat
    content = chat[-1].get("content")
    if isinstance(content, list):  # Gradio's normalized form: [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, str) and content.endswith(PENDING):
        text = content[: -len(PENDING)].rstrip()
        chat[-1] = {"role": "assistant", "content": (text + "\n\n" if text else "") + "*(stopped)*"}
    return chat


# ---------------------------------------------------------------- the page

CSS = """
#demo-status p { margin: 0; }
#demo-status .error { color: #b42318; font-weight: 600; }
.demo-chat .image-frame img { max-height: 220px; width: auto; }
"""


def _status_html(errors: list[str]) -> str:
    return "\n".join(f'<p class="error">{_escape(e)}</p>' for e in errors)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_app(targets: list[Target], settings: Settings | None = None) -> gr.Blocks:
    import gradio as gr  # imported here: checks and errors before the page need not wait for it

    settings = settings or Settings()
    if not 1 <= len(targets) <= 2:
        raise ValueError("the demo shows one model, or two side by side")
    compare = len(targets) == 2
    examples = example_paths()

    with gr.Blocks(title=settings.title, fill_height=True) as app:
        if compare:
            sub = (f"The same message goes to **{targets[0].label}** and **{targets[1].label}**; "
                   "their answers stream side by side with their speed.")
        else:
            sub = f"Chatting with **{targets[0].label}**{' — ' + targets[0].note if targets[0].note else ''}."
        gr.Markdown(f"## {settings.title}\n{sub} Attach an image with the clip (or drop / paste it), "
                    "ask a question, press Enter.")
        chats = []
        with gr.Row(equal_height=True):
            for i, t in enumerate(targets):
                with gr.Column(scale=1, min_width=320):
                    label = t.label + (f" — {t.note}" if t.note else "")
                    chats.append(gr.Chatbot(label=label, elem_id=f"chat-{i}", height=460,
                                            buttons=["copy"], layout="bubble",
                                            elem_classes=["demo-chat"]))
        status = gr.HTML("", elem_id="demo-status")
        box = gr.MultimodalTextbox(
            file_count="multiple", sources=["upload"], elem_id="demo-input", show_label=False,
            placeholder="Ask about an image: attach it with the clip, or drop / paste it here",
            submit_btn=True, stop_btn=True, autofocus=True)
        with gr.Row():
            clear = gr.Button("Clear chat", elem_id="demo-clear", size="sm", variant="secondary", scale=0,
                              min_width=120)
        gr.Examples(
            examples=[[{"text": q, "files": [str(p)]}] for p, q in examples],
            inputs=[box], label="Examples (click one, then press Enter)", examples_per_page=8)
        histories = gr.State([[] for _ in targets])  # per model: OpenAI messages of the finished turns
        limits = (f"Images: PNG, JPEG, WebP or GIF up to {settings.max_image_bytes / 2**20:g} MiB; "
                  f"up to {settings.max_images} images per request (older ones are not resent); "
                  f"answers up to {settings.max_tokens} tokens.")
        gr.Markdown(f"<small>{limits}</small>")

        def respond(msg: dict | None, hist: list[list[dict]], *chat_values) -> Iterator[tuple]:
            chat_values = [list(c or []) for c in chat_values]
            msg = msg or {}
            text = (msg.get("text") or "").strip()
            files = list(msg.get("files") or [])
            keep_box = gr.MultimodalTextbox(interactive=True)

            def frame(box_update, status_html, chats_now, hist_now):
                return (box_update, status_html, hist_now, *chats_now)

            def refusal(box_update, status_html):  # nothing sent: the conversation is not re-sent to the page
                return (box_update, status_html, gr.skip(), *(gr.skip() for _ in targets))

            if not text and not files:
                yield refusal(keep_box, _status_html([("error: the message is empty — type a question, "
                                                       "attach an image, or both")]))
                return
            parts, ok_files, errors = load_images(files, settings)
            if errors:  # nothing is sent; the good files and the text stay in the box
                yield refusal(gr.MultimodalTextbox(value={"text": msg.get("text") or "", "files": ok_files},
                                                   interactive=True), _status_html(errors))
                return
            refused = [t.label for t in targets if parts and not t.accepts_images]
            if refused:
                yield refusal(keep_box, _status_html([(f"error: {', '.join(refused)} is a text-only model — "
                                                       "send text only, or start the demo with a VL model")]))
                return
            question = text or DEFAULT_QUESTION
            user = {"role": "user", "content": [*parts, {"type": "text", "text": question}]} if parts \
                else {"role": "user", "content": question}
            shown_user = {"role": "user", "content": [*({"path": f} for f in ok_files), question]} if ok_files \
                else {"role": "user", "content": question}
            for c in chat_values:
                c.extend([shown_user, {"role": "assistant", "content": PENDING}])

            q: queue.Queue = queue.Queue()
            cancel = threading.Event()
            outcomes = [_Outcome() for _ in targets]
            for i, t in enumerate(targets):
                threading.Thread(target=_stream_into, daemon=True, name=f"demo-stream-{i}",
                                 args=(t, request_messages(hist[i], user, settings), settings, i, q, cancel)).start()
            yield frame(gr.MultimodalTextbox(value=None, interactive=False), "", chat_values, hist)
            try:
                last, dirty, heard = 0.0, False, time.monotonic()
                idle = (gr.skip(),) * (3 + len(targets))  # "no change": keeps the stop button responsive
                while not all(o.done for o in outcomes):
                    now = time.monotonic()
                    try:  # short waits: Gradio can only stop this generator when it yields
                        batch = [q.get(timeout=max(0.0, last + UI_REFRESH_S - now) if dirty else POLL_S)]
                    except queue.Empty:
                        batch = []
                    while True:  # take everything already waiting, then draw once
                        try:
                            batch.append(q.get_nowait())
                        except queue.Empty:
                            break
                    now = time.monotonic()
                    if batch:
                        heard = now
                    elif now - heard > settings.timeout_s + 30:  # a worker gone silent: a message, not a spinner
                        batch = [(i, _Outcome(o.text, error="error: no answer in time — check the server",
                                              done=True)) for i, o in enumerate(outcomes) if not o.done]
                    for idx, o in batch:
                        outcomes[idx] = o
                    dirty = dirty or bool(batch)
                    if not dirty or (now - last < UI_REFRESH_S and not any(o.done for _, o in batch)):
                        if not dirty:
                            yield idle
                        continue
                    last, dirty = now, False
                    for c, t, out in zip(chat_values, targets, outcomes):
                        c[-1] = {"role": "assistant", "content": _answer_text(t, out)}
                    yield frame(gr.MultimodalTextbox(interactive=False), "", chat_values, hist)
            finally:
                cancel.set()
            new_hist = []
            for h, out in zip(hist, outcomes):
                if out.error:  # a failed turn is shown but not sent again
                    new_hist.append(list(h))
                else:
                    new_hist.append([*h, user, {"role": "assistant", "content": out.text}])
            for c, t, out in zip(chat_values, targets, outcomes):
                c[-1] = {"role": "assistant", "content": _answer_text(t, out)}
            errs = [f"{t.label}: {out.error}" for t, out in zip(targets, outcomes) if out.error]
            yield frame(gr.MultimodalTextbox(value=None, interactive=True), _status_html(errs), chat_values,
                        new_hist)

        # trigger_mode "multiple": after the stop button the page may still count the stopped run as pending
        # and would drop the next Enter ("once"); double sends are prevented by disabling the box instead
        event = box.submit(respond, [box, histories, *chats], [box, status, histories, *chats],
                           concurrency_limit=4, show_progress="hidden", trigger_mode="multiple")
        def stopped(*chat_values):
            return (gr.MultimodalTextbox(interactive=True), *[mark_stopped(c) for c in chat_values])

        box.stop(stopped, chats, [box, *chats], cancels=[event])

        def reset():
            return ("", [[] for _ in targets], *([[]] * len(targets)))

        clear.click(reset, None, [status, histories, *chats], cancels=[event])
        for c in chats:  # a chat's own trash button starts over everywhere
            c.clear(reset, None, [status, histories, *chats], cancels=[event])
    return app


def launch(app: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, auth=None, share: bool = False,
           debug: bool = False, max_file_mb: float = 40, block: bool = False) -> str:
    """Serve the page (headless, no browser opened); returns its local URL."""
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=host, server_port=port, auth=auth, share=share, show_error=debug,
                           prevent_thread_lock=not block, quiet=True, css=CSS,
                           max_file_size=f"{max_file_mb:.0f}mb", footer_links=["gradio"],
                           auth_message="Log in (see the terminal that started the demo)" if auth else None)
    return url
