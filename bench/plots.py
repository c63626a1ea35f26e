"""PNG plots of a report (matplotlib, headless): tokens/s vs concurrency, TTFT/TPOT, memory bars."""
from __future__ import annotations

from pathlib import Path

GB = 1e9


def _ok(report: dict) -> list[dict]:
    return [v for v in report.get("variants", []) if v.get("status") == "ok"]


def make_plots(report: dict, out_dir: Path, memory: tuple[str, str]) -> list[str]:
    """Write the PNGs into out_dir; returns their file names (relative, for report.md). `report["derived"]` is
    bench.report.derive's; `memory`: (row key, label) of the memory column bench.report chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    vs = _ok(report)
    written: list[str] = []
    if not vs:
        return written
    scenarios = [s for s in ("text", "image") if any((v.get("runs") or {}).get(s) for v in vs)]

    # 1. output tokens/s vs concurrency
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4.2), squeeze=False)
    for ax, scen in zip(axes[0], scenarios):
        for v in vs:
            runs = (v.get("runs") or {}).get(scen) or {}
            cs = sorted(int(c) for c in runs)
            if cs:
                ax.plot(cs, [runs[str(c)]["output_throughput"] for c in cs], marker="o", label=v["alias"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("output tokens/s")
        ax.set_title(f"throughput ({scen})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    written.append("throughput.png")

    # 2. TTFT and TPOT (mean, with p99 whiskers) at concurrency 1 and at the top level
    conc = sorted({int(c) for v in vs for c in ((v.get("runs") or {}).get("text") or {})})
    levels = sorted({conc[0], conc[-1]}) if conc else []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(levels))
    for ax, metric, title in ((axes[0], "ttft", "TTFT (ms, text)"), (axes[1], "tpot", "TPOT (ms, text)")):
        xs = range(len(vs))
        for j, c in enumerate(levels):
            means, errs = [], []
            for v in vs:
                r = ((v.get("runs") or {}).get("text") or {}).get(str(c)) or {}
                m, p99 = r.get(f"mean_{metric}_ms"), r.get(f"p99_{metric}_ms")
                means.append(m or 0.0)
                errs.append(max(0.0, (p99 or 0.0) - (m or 0.0)))
            ax.bar([x + j * width for x in xs], means, width, yerr=[[0] * len(errs), errs], capsize=3,
                   label=f"c={c} (mean, whisker p99)")
        ax.set_xticks([x + width * (len(levels) - 1) / 2 for x in xs])
        ax.set_xticklabels([v["alias"] for v in vs], rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    written.append("latency.png")

    # 3. memory bars: weights on disk, bytes read per token, resident/device peak
    mem_key, mem_label = memory
    rows = {r["alias"]: r for r in report["derived"]["rows"]}
    series = [("weights on disk", lambda v: (v.get("disk") or {}).get("weights_bytes")),
              ("read per decoded token", lambda v: (v.get("weights") or {}).get("bytes_per_token")),
              (mem_label.replace(" GB", ""), lambda v: rows.get(v["alias"], {}).get(mem_key))]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(vs) + 3), 4.2))
    width = 0.8 / len(series)
    for j, (name, fn) in enumerate(series):
        vals = [(fn(v) or 0) / GB for v in vs]
        bars = ax.bar([x + j * width for x in range(len(vs))], vals, width, label=name)
        for b, val in zip(bars, vals):
            if val:
                ax.annotate(f"{val:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks([x + width for x in range(len(vs))])
    ax.set_xticklabels([v["alias"] for v in vs], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("GB")
    ax.set_title("memory")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "memory.png", dpi=110)
    plt.close(fig)
    written.append("memory.png")
    return written
