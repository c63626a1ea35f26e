"""The one client for the project's servers (serve.chat, the demo and the benchmarks use it).

    from serve.client import chat, user_message
    text, stats = chat(base_url, "tiny-vl", [user_message("What is in the picture?", ["cat.png"])])
    print(text, stats.ttft_s, stats.tokens_per_s)

Streaming goes through the `openai` client with `stream_options={"include_usage": True}`, so token
counts are the server's own. Images travel as data URLs. Connection and server failures raise
UserError with one clear line.
"""
from __future__ import annotations

import base64
import io
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError

MAX_IMAGE_BYTES = 20 * 2**20
URL_TIMEOUT_S = 15.0
KEEP_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


# ---------------------------------------------------------------- messages

PATCH, MERGE = 16, 2  # Qwen3-VL's image processor: 16-px patches, 2 x 2 of them merged into one image token
PIXELS_PER_TOKEN = (PATCH * MERGE) ** 2


def fit_pixels(image, max_pixels: int, patch: int = PATCH, merge: int = MERGE):
    """`image` resized as Qwen-VL's image processor resizes it (transformers' `smart_resize`: sides multiples of
    patch x merge, at most `max_pixels`, aspect kept), or itself where it already is that size. vLLM applies the
    model's processor itself; llama.cpp 0.3.36's server has no image budget (its mtmd makes 196 tokens of a
    448 x 448 picture where the processor of a 65,536-pixel budget makes 64): a client sends it this instead."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    w, h = image.size
    factor = patch * merge
    nh, nw = smart_resize(h, w, factor=factor, min_pixels=factor * factor, max_pixels=max_pixels)
    if (nw, nh) == (w, h):
        return image
    from PIL import Image

    return image.resize((nw, nh), Image.Resampling.BICUBIC)


def image_part(src: Any, allow_urls: bool = False, max_bytes: int = MAX_IMAGE_BYTES,
               max_pixels: int | None = None) -> dict:
    """A chat content part for an image: local path, PIL image, raw bytes, a data URL, or (if allowed) an
    http(s) URL, fetched here with a timeout and size limit. PNG/JPEG/WebP/GIF keep their bytes; other
    formats and PIL images are sent as PNG. `max_pixels`: a picture with more pixels is resized here
    (`fit_pixels`) and sent as PNG, for a server without an image budget of its own (llama.cpp)."""
    if isinstance(src, dict) and src.get("type") in ("image_url", "image"):
        return src
    name = "image"
    if _is_pil(src):
        if max_pixels and src.size[0] * src.size[1] > max_pixels:
            src = fit_pixels(src, max_pixels)
        data, mime = _png_bytes(src), "image/png"
        return _part(data, mime, max_bytes, name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, Path)):
        s = str(src)
        if s.startswith("data:image/"):
            if len(s) > max_bytes * 4 // 3 + 64:
                raise UserError(f"the image data URL is larger than {max_bytes // 2**20} MiB", "send a smaller image")
            return {"type": "image_url", "image_url": {"url": s}}
        name = s
        if s.startswith(("http://", "https://")):
            if not allow_urls:
                raise UserError(f"image URLs are not allowed here: {s}", "download the image and pass its path")
            data = _fetch(s, max_bytes)
        else:
            p = Path(s).expanduser()
            if not p.is_file():
                raise UserError(f"image not found: {s}", "check the path")
            if p.stat().st_size > max_bytes:
                raise UserError(f"image {s} is larger than {max_bytes // 2**20} MiB", "send a smaller image")
            try:
                data = p.read_bytes()
            except OSError as e:
                raise UserError(f"cannot read image {s}: {e.strerror or e}", "check the file's permissions") from None
    else:
        raise UserError(f"cannot send a {type(src).__name__} as an image", "pass a path, bytes or a PIL image")
    if len(data) > max_bytes:
        raise UserError(f"image {name} is larger than {max_bytes // 2**20} MiB", "send a smaller image")
    fmt = _image_format(data, name)
    from PIL import Image

    if max_pixels:
        with Image.open(io.BytesIO(data)) as img:
            if img.size[0] * img.size[1] > max_pixels:
                return _part(_png_bytes(fit_pixels(img.convert("RGB"), max_pixels)), "image/png", max_bytes, name)
    if fmt in KEEP_FORMATS:
        return _part(data, KEEP_FORMATS[fmt], max_bytes, name)
    return _part(_png_bytes(Image.open(io.BytesIO(data))), "image/png", max_bytes, name)


def user_message(text: str, images: Iterable[Any] = (), allow_urls: bool = False,
                 max_pixels: int | None = None) -> dict:
    """A user turn: plain text, or the images (paths, PIL images, bytes, parts) followed by the text; images over
    `max_pixels` are resized here (see `image_part`)."""
    images = list(images or ())
    if not images:
        return {"role": "user", "content": text}
    parts = [image_part(i, allow_urls=allow_urls, max_pixels=max_pixels) for i in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(obj, Image.Image)


def _png_bytes(img) -> bytes:
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image_format(data: bytes, name: str) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
            return img.format or ""
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{name} is not a readable image ({type(e).__name__})",
                        "pass a PNG, JPEG, WebP or GIF file") from None
    except Image.DecompressionBombError:
        raise UserError(f"{name} has too many pixels to decode safely",
                        "send a smaller image (resize it below 89 megapixels)") from None


def _part(data: bytes, mime: str, max_bytes: int, name: str) -> dict:
    if len(data) > max_bytes:
        raise UserError(f"image {name} is larger than {max_bytes // 2**20} MiB", "send a smaller image")
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _fetch(url: str, max_bytes: int) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "qwen-w4-client"})
    try:
        with urllib.request.urlopen(req, timeout=URL_TIMEOUT_S) as r:
            data = r.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"cannot download image {url}: {getattr(e, 'reason', e)}",
                        "check the URL and the network, or pass a local file") from None
    if len(data) > max_bytes:
        raise UserError(f"image {url} is larger than {max_bytes // 2**20} MiB", "send a smaller image")
    return data


# ---------------------------------------------------------------- chat

@dataclass
class ChatStats:
    """Timing of one streamed answer. TTFT ends at the first chunk with a choice: vLLM and llama.cpp send it
    once the first token exists, even when its text is held back (a partial UTF-8 character). Token counts are
    the server's (`usage`); `tokens_per_s` is the
    decode rate after the first token, (output_tokens - 1) / (total_s - ttft_s), i.e. 1 / time per
    output token; `e2e_tokens_per_s` divides by the whole request time instead."""

    ttft_s: float
    total_s: float
    output_tokens: int
    prompt_tokens: int
    tokens_per_s: float
    itl_s: list[float] = field(default_factory=list)  # gaps between choice chunks after TTFT's chunk
    finish_reason: str | None = None  # "stop", "length", ...
    usage_reported: bool = True  # False: the server sent no usage; output_tokens counts text chunks

    @property
    def e2e_tokens_per_s(self) -> float:
        return self.output_tokens / self.total_s if self.total_s > 0 else 0.0

    def line(self) -> str:
        return (f"TTFT {self.ttft_s * 1000:.0f} ms, {self.output_tokens} tokens in {self.total_s:.2f} s, "
                f"{self.tokens_per_s:.1f} tokens/s (prompt {self.prompt_tokens} tokens)")


@dataclass
class Event:
    delta: str  # new text in this event
    text: str  # the answer so far
    done: bool
    stats: ChatStats | None = None  # set on the last event


def make_client(base_url: str, api_key: str | None = None, timeout: float = 300.0):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0, client=None) -> list[str]:
    cl = client or make_client(base_url, api_key, timeout)
    try:
        return [m.id for m in cl.models.list().data]
    except Exception as e:  # noqa: BLE001 - turned into one line
        raise _user_error(e, base_url, None) from None


def stream_chat(base_url: str, model: str | None, messages: list[dict], *, api_key: str | None = None,
                max_tokens: int = 256, temperature: float = 0.0, ignore_eos: bool = False,
                min_tokens: int | None = None, timeout: float = 300.0, client=None, **params) -> Iterator[Event]:
    """Stream one chat completion. Yields an Event per text chunk, then a final Event(done=True, stats=...).
    `model=None` asks the server which model it serves. Extra `params` go to the request as they are."""
    own = client is None
    cl = client or make_client(base_url, api_key, timeout)
    try:
        yield from _stream(cl, base_url, model, messages, max_tokens=max_tokens, temperature=temperature,
                           ignore_eos=ignore_eos, min_tokens=min_tokens, api_key=api_key, **params)
    finally:
        if own:
            cl.close()


def _stream(cl, base_url: str, model: str | None, messages: list[dict], *, max_tokens: int, temperature: float,
            ignore_eos: bool, min_tokens: int | None, api_key: str | None, **params) -> Iterator[Event]:
    if model is None:
        models = served_models(base_url, api_key, client=cl)
        if not models:
            raise UserError(f"the server at {base_url} serves no model", "check the server")
        model = models[0]
    extra_body = dict(params.pop("extra_body", None) or {})
    if ignore_eos:
        extra_body["ignore_eos"] = True
    if min_tokens is not None:
        extra_body["min_tokens"] = min_tokens
    text, chunks, gaps = "", 0, []
    usage = None
    finish = None
    got_chunk = False
    t0 = time.perf_counter()
    t_first = t_last = None
    stream = None
    try:
        stream = cl.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True,
            stream_options={"include_usage": True}, extra_body=extra_body or None, **params)
        for chunk in stream:
            got_chunk = True  # the server answers (its first chunk may carry no text yet)
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            for choice in chunk.choices or ():
                now = time.perf_counter()
                if t_first is None:  # the server's first choice chunk follows its first token (vLLM and
                    t_first = t_last = now  # llama.cpp send it then), even when that token's text is withheld
                else:  # ITL: every later choice chunk, with text or not (the finish chunk too), as vllm bench
                    gaps.append(now - t_last)
                    t_last = now
                if choice.finish_reason:
                    finish = choice.finish_reason
                delta = (choice.delta.content if choice.delta else None) or ""
                if not delta:
                    continue
                chunks += 1
                text += delta
                yield Event(delta, text, False)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - openai / httpx errors become one line
        if (t_first is not None or got_chunk) and _is_cut(e):
            detail = "" if _is_connection_error(e) else f": {_message(e)}"
            raise UserError(f"the server at {base_url} stopped mid-answer (after {chunks} chunks){detail}",
                            "it probably stopped or crashed: check its log") from None
        raise _user_error(e, base_url, model) from None
    finally:
        if stream is not None:  # also when the caller stops early: the server aborts the request
            stream.close()
    if finish is None and usage is None:  # the stream ended without its last chunk
        what = f"stopped mid-answer (after {chunks} chunks)" if got_chunk else "accepted the request but sent no answer"
        raise UserError(f"the server at {base_url} {what}", "it probably stopped or crashed: check its log")
    total = time.perf_counter() - t0
    ttft = (t_first - t0) if t_first is not None else total
    # both engines stream the token usage; a server that sends none gets its text chunks counted (a lower bound: a
    # chunk can hold two tokens whose bytes only together are UTF-8), and usage_reported says so
    out = int(usage.completion_tokens) if usage else chunks
    prompt = int(usage.prompt_tokens) if usage else 0
    decode = total - ttft
    rate = (out - 1) / decode if out > 1 and decode > 0 else (out / total if total > 0 else 0.0)
    stats = ChatStats(ttft, total, out, prompt, rate, gaps, finish, usage is not None)
    yield Event("", text, True, stats)


def chat(base_url: str, model: str | None, messages: list[dict], **kw) -> tuple[str, ChatStats]:
    """The whole answer and its stats (same arguments as `stream_chat`)."""
    last = None
    for ev in stream_chat(base_url, model, messages, **kw):
        last = ev
    assert last is not None and last.done
    return last.text, last.stats


def _http_error(e: BaseException | None, *names: str) -> bool:
    """`e` is an httpx / httpx2 exception of one of these classes (or a subclass), found by name: openai may use
    either library, and importing httpx here while another thread's request fails breaks openai's own check of
    the loaded httpx ("partially initialized module 'httpx'")."""
    return any(c.__name__ in names and c.__module__.split(".")[0] in ("httpx", "httpx2") for c in type(e).__mro__)


def _is_connection_error(e: Exception) -> bool:
    import openai

    return isinstance(e, (openai.APIConnectionError, ConnectionError)) or \
        _http_error(e, "TransportError", "StreamError")


def _is_cut(e: Exception) -> bool:
    """An error that ends a stream that had started: lost connection, or an error event in the stream."""
    import openai

    return _is_connection_error(e) or (isinstance(e, openai.APIError) and not isinstance(e, openai.APIStatusError))


def _user_error(e: Exception, base_url: str, model: str | None) -> UserError:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return UserError(f"the server at {base_url} did not answer in time", "raise the timeout, or check the server")
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        if _http_error(cause, "RemoteProtocolError", "ReadError"):
            return UserError(f"the server at {base_url} closed the connection mid-answer",
                             "it probably stopped or crashed: check its log")
        return UserError(f"cannot connect to the server at {base_url}",
                         "start one with `python -m serve --model ALIAS`, or check --base-url")
    if _http_error(e, "RemoteProtocolError", "ReadError", "StreamError"):
        return UserError(f"the server at {base_url} closed the connection mid-answer",
                         "it probably stopped or crashed: check its log")
    if isinstance(e, openai.AuthenticationError):
        return UserError(f"the server at {base_url} rejected the API key",
                         "pass the key the server was started with (--api-key or QWEN_W4_API_KEY)")
    if isinstance(e, openai.NotFoundError):
        return UserError(f"the server at {base_url} does not serve model '{model}' (or is not an OpenAI API)",
                         "pass the alias the server was started with, or omit --model")
    if isinstance(e, openai.APIStatusError):
        msg = _message(e)
        return UserError(f"the server at {base_url} refused the request (HTTP {e.status_code}): {msg}",
                         "check the request, or the server's log")
    if isinstance(e, openai.APIError):  # an error event in the stream
        return UserError(f"the server at {base_url} failed on the request: {_message(e)}",
                         "check the server's log (`python -m serve` prints the likely cause)")
    if _http_error(e, "HTTPError"):
        return UserError(f"connection to {base_url} failed: {type(e).__name__}: {e}", "check the server")
    return UserError(f"chat with {base_url} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                     "re-run with --debug for the traceback")


def _message(e) -> str:
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = body.get("message") or (err.get("message") if isinstance(err, dict) else err)
    msg = msg or getattr(e, "message", "") or str(e)
    return (str(msg).splitlines() or [""])[0][:300]
