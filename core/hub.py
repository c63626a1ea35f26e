"""Hugging Face Hub availability: a Hub id is usable if it is in the local cache or the Hub is reachable."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from core.errors import UserError

HUB_HOST = "huggingface.co"


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` holding config.json, if any (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache: treat as not cached
        return None
    return Path(p).parent if isinstance(p, str) else None


def reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require(repo_id: str, alias: str | None = None) -> Path | None:
    """Cached snapshot path, or None when it will be downloaded; UserError when neither can work."""
    snap = cached_snapshot(repo_id)
    if snap is not None:
        return snap
    if reachable():
        return None
    name = f"'{alias}' ({repo_id})" if alias else f"'{repo_id}'"
    offline = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    raise UserError(
        f"{name} is not in the local Hugging Face cache and the Hub cannot be reached{offline}",
        "download it on a connected machine (`huggingface-cli download " + repo_id + "`) into HF_HOME, "
        "or use a local artifact: `python -m serve --list` shows what is local",
    )
