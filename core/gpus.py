"""NVIDIA GPU classes as data, and `--gpu` specs: `l40s`, `4xl40s`, `"4x RTX 4090"`, or nvidia-smi's own line.

Per class: the name nvidia-smi prints, VRAM as nvidia-smi's `memory.total` reports it (MiB, what vLLM's
`--gpu-memory-utilization` is a share of), CUDA compute capability, and memory bandwidth in GB/s (10^9 B/s) as the
vendor's spec page states it (the page is cited in each row's comment). The bandwidth is the vendor's peak figure,
not a measured copy: bench/predict.py turns it into predicted decode speed with an efficiency measured against the
same kind of figure. VRAM values are nvidia-smi outputs seen on real machines of each class (public logs and
fixtures); the vendor's own GB figure is in `vendor_gb`.

`parse(spec)` is the one reader of `--gpu` (serve --plan, serve --device cuda --dry-run, bench --predict):
`[N x] CLASS` (case, space, dash and underscore insensitive; "NVIDIA" / "GeForce" / "Tesla" may be left out;
aliases such as `h100`, `a100-80g`) or `[N x] "NAME, MiB, X.Y"` (nvidia-smi's
`--query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits` line, one GPU per line).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import UserError
from core.hardware import Gpu, parse_nvidia_smi


@dataclass(frozen=True)
class GpuClass:
    key: str  # the canonical `--gpu` name
    label: str  # short display name (tables)
    smi_name: str  # what nvidia-smi prints as `name`
    memory_mib: int  # nvidia-smi memory.total (MiB)
    vendor_gb: int  # the vendor's memory size (GB, as marketed)
    capability: tuple[int, int]
    bandwidth_gb_s: float  # vendor spec, GB/s
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def gpu(self) -> Gpu:
        """As core.hardware describes a detected GPU (memory in GiB, rounded as parse_nvidia_smi does)."""
        return Gpu(self.smi_name, round(self.memory_mib / 1024, 1), self.capability)


CLASSES: tuple[GpuClass, ...] = (
    # https://www.nvidia.com/en-us/data-center/tesla-t4/ : 16 GB GDDR6, 320+ GB/s; Turing SM 7.5
    GpuClass("t4", "T4", "Tesla T4", 15360, 16, (7, 5), 320.0),
    # https://www.nvidia.com/en-us/data-center/products/a10-gpu/ : 24 GB GDDR6, 600 GB/s; Ampere GA102 SM 8.6
    GpuClass("a10", "A10", "NVIDIA A10", 23028, 24, (8, 6), 600.0, ("a10g",),
             "AWS's A10G reports the same name and memory"),
    # https://www.nvidia.com/en-us/data-center/l4/ : 24 GB, 300 GB/s; Ada SM 8.9
    GpuClass("l4", "L4", "NVIDIA L4", 23034, 24, (8, 9), 300.0),
    # https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf (table 9) and
    # https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3090-3090ti/ : 24 GB GDDR6X, 936 GB/s; SM 8.6
    GpuClass("rtx3090", "RTX 3090", "NVIDIA GeForce RTX 3090", 24576, 24, (8, 6), 936.0, ("3090",)),
    # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf (appendix A) and
    # https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4090/ : 24 GB GDDR6X, 1008 GB/s; SM 8.9
    GpuClass("rtx4090", "RTX 4090", "NVIDIA GeForce RTX 4090", 24564, 24, (8, 9), 1008.0, ("4090",)),
    # https://www.nvidia.com/en-us/design-visualization/rtx-a6000/ : 48 GB GDDR6, 768 GB/s; SM 8.6
    GpuClass("rtx-a6000", "RTX A6000", "NVIDIA RTX A6000", 49140, 48, (8, 6), 768.0, ("a6000",)),
    # https://www.nvidia.com/en-us/data-center/l40/ : 48 GB GDDR6, 864 GB/s; Ada SM 8.9
    GpuClass("l40", "L40", "NVIDIA L40", 46068, 48, (8, 9), 864.0),
    # https://www.nvidia.com/en-us/data-center/l40s/ : 48 GB GDDR6, 864 GB/s; Ada SM 8.9
    GpuClass("l40s", "L40S", "NVIDIA L40S", 46068, 48, (8, 9), 864.0),
    # https://www.nvidia.com/en-us/data-center/a100/ : A100 40GB SXM 1,555 GB/s; SM 8.0
    GpuClass("a100-40gb", "A100 40GB", "NVIDIA A100-SXM4-40GB", 40960, 40, (8, 0), 1555.0, ("a100-40g",),
             "SXM4"),
    # https://www.nvidia.com/en-us/data-center/a100/ : A100 80GB SXM 2,039 GB/s (PCIe 1,935); SM 8.0
    GpuClass("a100-80gb", "A100 80GB", "NVIDIA A100-SXM4-80GB", 81920, 80, (8, 0), 2039.0, ("a100-80g",),
             "SXM4"),
    # https://www.nvidia.com/en-us/data-center/h100/ : H100 SXM 80 GB, 3.35 TB/s (PCIe: 2 TB/s); Hopper SM 9.0
    GpuClass("h100", "H100 80GB SXM", "NVIDIA H100 80GB HBM3", 81559, 80, (9, 0), 3350.0,
             ("h100-sxm", "h100-80gb", "h100-80g", "h100-sxm5"), "SXM5, HBM3; the PCIe card has 2.0 TB/s"),
    # https://www.nvidia.com/en-us/data-center/h200/ : 141 GB HBM3e, 4.8 TB/s; Hopper SM 9.0
    GpuClass("h200", "H200", "NVIDIA H200", 143771, 141, (9, 0), 4800.0, ("h200-sxm",), "SXM"),
)
AMBIGUOUS = {"a100": ("a100-40gb", "a100-80gb")}
_NOISE = re.compile(r"\b(nvidia|geforce|tesla)\b")
_COUNT = re.compile(r"\s*(\d+)\s*[x×*]\s*(\S.*)", re.IGNORECASE | re.DOTALL)


def normalize(name: str) -> str:
    """`"NVIDIA GeForce RTX 4090"`, `rtx-4090`, `RTX_4090` -> `rtx4090`."""
    return re.sub(r"[^a-z0-9]", "", _NOISE.sub("", name.lower()))


def _index() -> dict[str, GpuClass]:
    out: dict[str, GpuClass] = {}
    for c in CLASSES:
        for n in (c.key, c.smi_name, c.label, *c.aliases):
            out[normalize(n)] = c
    return out


_BY_NAME = _index()


def find(name: str) -> GpuClass | None:
    """The class a name (a `--gpu` name, an alias, or nvidia-smi's `name`) stands for; None: not in the table."""
    return _BY_NAME.get(normalize(name))


def class_of(gpu: Gpu) -> GpuClass | None:
    """The class of a GPU as detected or planned (by its nvidia-smi name)."""
    return find(gpu.name)


def names() -> str:
    return ", ".join(c.key for c in CLASSES)


def parse(spec: str) -> list[Gpu]:
    """`--gpu SPEC` -> the GPUs of one machine. UserError (one line, the known names) for what it cannot read."""
    count, rest = 1, spec.strip()
    m = _COUNT.fullmatch(rest)
    if m:
        count, rest = int(m.group(1)), m.group(2).strip()
    if count < 1:
        raise UserError(f"--gpu '{spec}' asks for {count} GPUs", "use N x NAME with N >= 1, e.g. --gpu 4xl40s")
    if "," in rest or "\n" in rest:  # nvidia-smi's "NAME, MiB, X.Y" line(s)
        gpus = parse_nvidia_smi(rest)
        if not gpus:
            raise UserError(f"--gpu '{spec}' is not 'NAME, MiB, X.Y'",
                            f'e.g. --gpu "NVIDIA L4, 23034, 8.9", or a class: {names()}')
        return gpus * count
    key = normalize(rest)
    if key in AMBIGUOUS:
        raise UserError(f"--gpu '{rest}' is ambiguous", f"use one of {', '.join(AMBIGUOUS[key])}")
    c = find(rest)
    if c is None:
        raise UserError(f"unknown GPU '{rest}'",
                        f"use one of {names()} (N x NAME for several, e.g. 4xl40s), or 'NAME, MiB, X.Y' as "
                        "nvidia-smi prints it")
    return [c.gpu] * count
