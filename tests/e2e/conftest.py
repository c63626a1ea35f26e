"""Session-wide heavy fixtures shared by every e2e test: quantized tiny artifacts and vLLM servers.

- `artifact(alias)`: the local folder of a catalog alias; tiny bases are built, tiny quantized
  variants are made once per session with `python -m quantize` (the real CLI).
- `server(alias)`: a real vLLM OpenAI server for that alias, started through `serve` once and
  shared by all tests; at most MAX_LIVE run at once (least recently used is stopped), all are
  stopped at session end.
"""
from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from core import catalog

MAX_LIVE = 2
REPO = Path(__file__).resolve().parents[2]


def _make_artifact(alias: str) -> Path:
    v = catalog.variant(alias)
    p = catalog.local_path(alias)
    if p is not None:
        return p
    if not v.is_quantized:
        return catalog.resolve(alias).path
    base = v.family.base_alias
    # one quantize run makes all three W4A16 formats of this base (they share the tuning)
    fmts = "autoround,gptq,awq"
    if v.format.name not in fmts.split(","):
        fmts = v.format.name
    cmd = [sys.executable, "-m", "quantize", "--model", base, "--formats", fmts, "--recipe", "light"]
    r = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    p = catalog.local_path(alias)
    assert p is not None, f"quantize did not write {alias}"
    return p


@pytest.fixture(scope="session")
def artifact():
    return _make_artifact


@pytest.fixture(scope="session")
def server(artifact):
    import serve

    live: OrderedDict[str, object] = OrderedDict()

    def get(alias: str, **kw):
        key = (alias, tuple(sorted(kw.items())))  # the same alias with other serve options is another server
        if key in live:
            live.move_to_end(key)
            srv = live[key]
            if srv.alive():
                return srv
            live.pop(key)
        artifact(alias)
        while len(live) >= MAX_LIVE:
            _, old = live.popitem(last=False)
            old.stop()
        srv = serve.start(alias, "vllm", **kw)
        live[key] = srv
        return srv

    yield get
    for srv in live.values():
        srv.stop()
