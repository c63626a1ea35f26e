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
    if any(r.get("predicted_tok_s") for r in report["derived"]["rows"]):
        written.append(_decode_plot(report, out_dir, plt))
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
    _grouped_bars(plt, out_dir / "memory.png", [v["alias"] for v in vs],
                  [(name, [(fn(v) or 0) / GB for v in vs]) for name, fn in series], "GB", "memory", "{:.2f}")
    written.append("memory.png")

    # 4. served quality: KL(16-bit || variant) per variant, text and image positions (bench/served_quality.py)
    kl_rows = [r for r in report["derived"]["rows"] if r.get("kl_text") is not None or r.get("kl_image") is not None]
    if kl_rows:
        series = [(f"{split} positions", [r.get(f"kl_{split}") or 0 for r in kl_rows]) for split in ("text", "image")
                  if any(r.get(f"kl_{split}") is not None for r in kl_rows)]
        _grouped_bars(plt, out_dir / "quality.png", [r["alias"] for r in kl_rows], series,
                      "mean KL(16-bit || variant), nats", "served quality: teacher-forced KL vs the 16-bit model",
                      "{:.3g}")
        written.append("quality.png")
    return written


def _decode_plot(report: dict, out_dir: Path, plt) -> str:
    """Batch-1 decode tok/s per variant: predicted (bench/predict.py) beside measured, where a variant has them."""
    rows = [r for r in report["derived"]["rows"] if r.get("predicted_tok_s") or r.get("decode_tok_s_bs1")]
    series = [(label, [r.get(key) or 0 for r in rows])
              for key, label in (("predicted_tok_s", "predicted"), ("decode_tok_s_bs1", "measured"))
              if any(r.get(key) for r in rows)]
    _grouped_bars(plt, out_dir / "decode.png", [r["alias"] for r in rows], series, "decode tokens/s, batch 1",
                  "batch-1 decode: predicted vs measured", "{:.0f}")
    return "decode.png"


def _grouped_bars(plt, path: Path, labels: list[str], series: list[tuple[str, list[float]]], ylabel: str, title: str,
                  fmt: str) -> None:
    """One group of bars per label, one bar per series, each annotated with its value (0: no bar label)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 3), 4.2))
    width = 0.8 / len(series)
    for j, (name, vals) in enumerate(series):
        bars = ax.bar([x + j * width for x in range(len(labels))], vals, width, label=name)
        for b, val in zip(bars, vals):
            if val:
                ax.annotate(fmt.format(val), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
