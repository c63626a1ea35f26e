"""Flags every command shares (--doctor, --debug) and the table printer for `--list`."""
from __future__ import annotations

import argparse

from core import catalog


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--doctor", action="store_true", help="print versions, hardware and what works here, then exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def print_catalog() -> None:
    rows = catalog.table()
    cols = ["alias", "modality", "format", "source", "hub_id", "local"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    print("  ".join(c.upper().ljust(widths.get(c, 0)) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in cols).rstrip())
    print(f"\nartifact root: {catalog.artifact_root()} (set QWEN_W4_HOME to move it)")
    print("source: local = artifact on disk; hub = downloaded by vLLM on first use; "
          "build = tiny model built on first use; quantize = make it with `python -m quantize`")
