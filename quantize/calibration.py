"""Calibration data: a local file (.txt, .jsonl, .json; image-text jsonl for VL), the tiny models' local corpus,
or AutoRound's own default dataset for real models. The exact data is hashed for the model card.

AutoRound needs every calibration sample to be at least `seqlen` tokens long (shorter ones make its caching fail
with a shape mismatch), so texts are joined and cut into windows of `seqlen` tokens with a margin.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError

AUTOROUND_DEFAULT = "NeelNanda/pile-10k"  # what AutoRound downloads when no dataset is given
TEXT_KEYS = ("text", "content", "prompt", "instruction", "input", "output", "response", "answer", "caption")
IMAGE_KEYS = ("image", "image_path", "img", "images")


@dataclass
class Calibration:
    """What AutoRound gets (`dataset`), where it came from, and its hash."""

    source: str  # file path, "local corpus (...)", or the Hub dataset AutoRound will download
    dataset: object  # list[str] for AutoRound, or None for AutoRound's default
    sha256: str | None  # of the exact samples (None: downloaded by AutoRound, not known in advance)
    samples: int
    tokens_per_sample: int | None
    images: int = 0  # image-text records seen (their text is used; the vision tower is not quantized)
    held_out: list[str] = field(default_factory=list)  # texts never given to AutoRound, for verify

    def card_dict(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "samples": self.samples,
                "tokens_per_sample": self.tokens_per_sample, "images_in_file": self.images}


def sha256_texts(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------- reading files

def _texts_of_record(rec) -> tuple[str | None, bool]:
    """One json record -> (text, has_image). Accepts strings, {text: ...}, chat `messages`, LLaVA `conversations`."""
    if isinstance(rec, str):
        return rec, False
    if not isinstance(rec, dict):
        return None, False
    has_image = any(k in rec and rec[k] for k in IMAGE_KEYS)
    for conv_key in ("messages", "conversations"):
        conv = rec.get(conv_key)
        if isinstance(conv, list):
            parts = []
            for m in conv:
                if not isinstance(m, dict):
                    continue
                c = m.get("content", m.get("value"))
                if isinstance(c, list):  # OpenAI-style parts
                    for p in c:
                        if isinstance(p, dict) and p.get("type") == "text":
                            parts.append(str(p.get("text", "")))
                        elif isinstance(p, dict) and p.get("type") in ("image", "image_url"):
                            has_image = True
                elif c is not None:
                    parts.append(str(c).replace("<image>", "").strip())
            if parts:
                return "\n".join(parts), has_image
    texts = [str(rec[k]) for k in TEXT_KEYS if isinstance(rec.get(k), (str, int, float)) and str(rec[k]).strip()]
    return ("\n".join(texts) if texts else None), has_image


def read_file(path: str | Path) -> tuple[list[str], int]:
    """Texts from a local .txt / .jsonl / .json file, and how many records carried an image."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"calibration dataset not found: {path}",
                        "pass a local .txt, .jsonl or .json file (offline), or leave --dataset out")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read calibration dataset {path}: {type(e).__name__}",
                        "pass a UTF-8 .txt, .jsonl or .json file") from None
    suffix = p.suffix.lower()
    texts: list[str] = []
    images = 0
    if suffix == ".txt":
        texts = [t.strip() for t in raw.split("\n\n") if t.strip()]
    elif suffix in (".jsonl", ".json"):
        records = []
        try:
            if suffix == ".jsonl":
                for lineno, line in enumerate(raw.splitlines(), 1):
                    if line.strip():
                        records.append(json.loads(line))
            else:
                lineno = 0
                data = json.loads(raw)
                if isinstance(data, dict):
                    data = data.get("data", data.get("train", [data]))
                records = data if isinstance(data, list) else [data]
        except json.JSONDecodeError as e:
            raise UserError(f"calibration dataset {path} is not valid JSON (line {lineno or e.lineno})",
                            "one JSON object per line for .jsonl, one JSON list for .json") from None
        for rec in records:
            t, img = _texts_of_record(rec)
            images += int(img)
            if t and t.strip():
                texts.append(t.strip())
    else:
        raise UserError(f"unsupported calibration file type '{p.suffix}'", "use .txt, .jsonl or .json")
    if not texts:
        raise UserError(f"calibration dataset {path} holds no text",
                        "give records with a 'text' field (or chat 'messages'), or plain paragraphs in a .txt")
    return texts, images


# ---------------------------------------------------------------- windows of seqlen tokens

def windows(texts: list[str], tokenizer, nsamples: int, seqlen: int) -> list[str]:
    """Join texts and cut them into `nsamples` strings of at least `seqlen` tokens each (when the data suffices)."""
    eos = tokenizer.eos_token or ""
    ids: list[int] = []
    want = nsamples * (seqlen + seqlen // 4 + 8)
    for t in texts:
        ids += tokenizer(t if (eos and t.rstrip().endswith(eos)) else t + eos, add_special_tokens=False)["input_ids"]
        if len(ids) >= want:
            break
    span = seqlen + seqlen // 4 + 8  # margin: decode -> re-encode may merge tokens differently
    out = []
    for i in range(nsamples):
        chunk = ids[i * span:(i + 1) * span]
        if len(chunk) < span:
            break
        out.append(tokenizer.decode(chunk, skip_special_tokens=False))
    if not out:
        raise UserError(f"calibration data has only {len(ids)} tokens: not enough for one sample of {seqlen}",
                        "give more text, or a smaller --seqlen")
    # keep only windows that re-tokenize to >= seqlen tokens
    out = [s for s in out if len(tokenizer(s, add_special_tokens=False)["input_ids"]) >= seqlen]
    if not out:
        raise UserError("calibration samples are shorter than --seqlen after tokenization", "lower --seqlen")
    return out


def prepare(dataset: str | None, *, tokenizer, nsamples: int, seqlen: int, local_corpus: bool,
            held_out: int = 6) -> Calibration:
    """Build the calibration set.

    dataset: a local file path; None -> the tiny models' local corpus (local_corpus=True) or AutoRound's default.
    """
    if dataset is None and not local_corpus:
        return Calibration(source=f"{AUTOROUND_DEFAULT} (AutoRound's default, downloaded by AutoRound)",
                           dataset=None, sha256=None, samples=nsamples, tokens_per_sample=seqlen)
    if dataset is None:
        from core import tiny

        docs = tiny.corpus(max_chars=min(1_500_000, max(300_000, nsamples * seqlen * 8)))  # ~4 chars a token
        # the last docs are held out for verify; calibration comes from the rest, read from the front, in the
        # chat format the tiny models were trained on (what they will be asked at serving time)
        held, docs = docs[-held_out * 4:], docs[:-held_out * 4]
        texts = (tokenizer.apply_chat_template(c, tokenize=False) for c in tiny.chat_samples(docs))
        images, source = 0, "local corpus: Python standard library docstrings as chats (core.tiny.corpus)"
    else:
        texts, images = read_file(dataset)
        n_held = min(held_out, max(0, len(texts) // 10))
        held, texts = (texts[-n_held:], texts[:-n_held]) if n_held else ([], texts)
        source = str(Path(dataset).expanduser().resolve())
    samples = windows(texts, tokenizer, nsamples, seqlen)
    return Calibration(source=source, dataset=samples, sha256=sha256_texts(samples), samples=len(samples),
                       tokens_per_sample=seqlen, images=images, held_out=held[:held_out * 4])
