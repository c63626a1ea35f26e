"""`python -m bench --gpu-check`: bf16 vs AutoRound W4A16 on the exact shape of Qwen3-VL-8B's language model,
random weights, in one command sized for one ~8-minute call on the lent GPU (an H200: torch + transformers, no vLLM).

Steps, each logged with its time: build a `Qwen3ForCausalLM` of the published text shape straight on the device, in
bf16 (speed and memory do not depend on weight values) -> copy bandwidth -> bf16 decode at batch 1 and 16 -> RTN
W4A16 of that model with AutoRound (the `rtn` recipe of quantize/recipes.py: sym, group 128; wall time) saved in
auto_round format to a temp folder -> reload with `AutoRoundConfig(backend=...)` (humming on a GPU) -> the same
decode -> bandwidth again -> report.json, report.md and plots in --out (bench.report, written after every stage so
that a run cut short still leaves its numbers), with a findings section of this check's own figures.

Measuring is the project's: bench.runner's per-variant loop drives bench.engines.transformers_engine (static cache,
compiled decode step; CUDA graphs on a GPU) with one fixed prompt of 256 tokens and 128 forced new tokens. The two
GPU traps of the shared notes are handled: generate() skips compilation for AutoRound-loaded models (the engine
forces it), and humming's linears break CUDA-graph recording, so each runs inside one opaque
`torch.library.custom_op` (`wrap_opaque`). `--gpu-check-budget` (seconds from the start, default 480) skips,
and records, a batch level that would end after it (judged by the longest level so far) and the W4 stage if it
would start after it.

On a CPU, `--gpu-check-shape small` builds core.tiny's text shape of the same architecture (for the test); the
W4 reload there uses AutoRound's CPU kernel (`--backend auto`: ark) and `--compile auto` decodes eagerly.

A GPU session: `make gpu-wheels` here first (the wheels that machine lacks, into .whl/, 5.6 MiB; .gitignore'd), then
one device call, about 8 minutes of device time; the command on one line:
    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target
                 /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; export PYTHONUNBUFFERED=1
                 HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE; python3 -m bench --gpu-check --debug --out $OUT/gpu-check
                 2>&1 | tee $OUT/gpu-check.log", carry=[".whl"], timeout_s=540)
--out is a folder under $OUT, not $OUT itself (bench.report writes a temp folder beside --out and renames it into
place); $OUT then holds gpu-check.log and gpu-check/ (report.json, report.md, 3 PNGs): 6 files, within the 8 that
come back. `make gpu-check` runs the same command where the packages are installed.
"""
from __future__ import annotations

import datetime as _dt
import gc
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import roofline
from bench.engines import VariantFailed, one_line
from bench.engines.transformers_engine import TransformersEngine
from bench.runner import Runner, Settings, environment
from core import shapes, tiny
from core.errors import UserError

# The language model of Qwen/Qwen3-VL-8B-Instruct (config.json `text_config`; tie_word_embeddings false), from
# core/shapes.py. Its M-RoPE gives a text-only token the same position on all three axes: plain RoPE.
QWEN3_VL_8B_TEXT = shapes.QWEN3_VL_8B_TEXT
SHAPES = {
    "8b": QWEN3_VL_8B_TEXT,
    "small": {**QWEN3_VL_8B_TEXT, **tiny.TEXT_SHAPE, "vocab_size": tiny.VOCAB, "max_position_embeddings": 32768},
}
INPUT_LEN = 256
OUTPUT_LEN = 128
CONCURRENCY = [1, 16]
REQUESTS = 3  # measured requests at batch 1 (batch 16: one batch), after one warm-up batch per level
ALIASES = ("bf16", "w4a16")
DTYPE_NAMES = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float32": "F32", "torch.int32": "I32",
               "torch.int64": "I64", "torch.int8": "I8", "torch.uint8": "U8"}


def log(msg: str, t0: float | None = None) -> None:
    stamp = f"{time.monotonic() - t0:6.1f}s " if t0 is not None else ""
    print(f"[gpu-check] {stamp}{msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- model

def text_config(shape: str, tokenizer):
    """Qwen3Config of the named shape, with the special token ids of core.tiny's tokenizer."""
    from transformers import Qwen3Config

    s = dict(SHAPES[shape])
    theta = s.pop("rope_theta")
    ids = tokenizer.convert_tokens_to_ids
    return Qwen3Config(**s, rope_parameters={"rope_type": "default", "rope_theta": theta}, hidden_act="silu",
                       attention_bias=False, dtype="bfloat16", eos_token_id=ids("<|im_end|>"),
                       pad_token_id=ids("<|endoftext|>"), bos_token_id=ids("<|endoftext|>"))


def build_model(config, device: str, seed: int = tiny.SEED):
    """Random bf16 weights made on the device itself (the 8B shape: 16 GB, under a second on a GPU)."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    return model.eval()


def tokenizer_and_prompt(n_tokens: int = INPUT_LEN):
    """core.tiny's tokenizer (trained here in seconds) and one fixed prompt of exactly `n_tokens` token ids."""
    docs = tiny.corpus(max_chars=300_000)
    tok = tiny.build_tokenizer(docs)
    ids = tok(" ".join(docs[:400]), add_special_tokens=False)["input_ids"][:n_tokens]
    if len(ids) < n_tokens:
        raise RuntimeError(f"the local text gave only {len(ids)} prompt tokens")
    return tok, ids


def weights_of(tensors, tied: bool = False) -> dict:
    """`roofline.weights` for tensors in memory, given as (name, safetensors dtype, bytes): the bf16 baseline is
    never written to disk. Same groups, same bytes-per-token rule."""
    groups = {g: 0 for g in roofline.GROUPS}
    dtypes: dict[str, dict[str, int]] = {g: {} for g in roofline.GROUPS}
    n = 0
    for name, dtype, nbytes in tensors:
        g = roofline.group_of(name)
        groups[g] += nbytes
        dtypes[g][dtype] = dtypes[g].get(dtype, 0) + nbytes
        n += 1
    per_token = groups["decoder_linear"] + groups["other"] + groups["lm_head"]
    if groups["lm_head"] == 0 and tied:
        per_token += groups["embedding"]
    return {"source": "model in memory (state_dict)", "tensors": n, "bytes_by_group": groups,
            "dtypes_by_group": {g: v for g, v in dtypes.items() if v}, "tied_embeddings": tied,
            "bytes_per_token": per_token}


def model_weights(model) -> dict:
    items = ((k, DTYPE_NAMES.get(str(t.dtype), str(t.dtype)), t.numel() * t.element_size())
             for k, t in model.state_dict().items())
    return weights_of(items, tied=bool(getattr(model.config, "tie_word_embeddings", False)))


# ---------------------------------------------------------------- opaque linears (CUDA-graph capture)

_OPAQUE: list = []
_OP = None


def _opaque_op():
    """One custom op that runs a registered module's own forward: torch.compile and CUDA graphs see one opaque
    call with a known output shape, never the kernel's Python (humming prepares its kernel config with CPU
    tensors, which breaks CUDA-graph recording when traced)."""
    global _OP
    if _OP is None:
        import torch

        # the schema is spelled out: this module's annotations are strings (from __future__ import annotations)
        @torch.library.custom_op("qwen_w4::opaque_linear", mutates_args=(), schema="(Tensor x, int index) -> Tensor")
        def opaque_linear(x, index):
            return _OPAQUE[index]._qwen_w4_forward(x)

        @opaque_linear.register_fake
        def _(x, index):
            return x.new_empty((*x.shape[:-1], _out_features(_OPAQUE[index])))

        _OP = opaque_linear
    return _OP


def _out_features(module) -> int:
    n = getattr(module, "outfeatures", None) or getattr(module, "out_features", None)
    if not n:
        raise ValueError(f"{type(module).__name__} has no outfeatures / out_features")
    return int(n)


def wrap_opaque(model, match=lambda m: str(getattr(m, "QUANT_TYPE", "")).startswith("humming")) -> int:
    """Route the forward of every module `match` accepts through the opaque op. Returns how many."""
    op = _opaque_op()
    n = 0
    for m in model.modules():
        if not match(m) or hasattr(m, "_qwen_w4_forward"):
            continue
        _out_features(m)
        m._qwen_w4_forward = m.forward
        index = len(_OPAQUE)
        _OPAQUE.append(m)
        m.forward = lambda x, _i=index: op(x, _i)
        n += 1
    return n


# ---------------------------------------------------------------- engine and runner

class OverBudget(VariantFailed):
    """A batch level that would end after --gpu-check-budget (judged by the longest level so far): skipped."""


class CheckEngine(TransformersEngine):
    """The project's transformers engine fed one fixed prompt, with a model built in memory (bf16) or loaded from
    the W4 checkpoint (the engine's own loading), and the humming linears made opaque on a GPU."""

    def __init__(self, alias: str, location: str | None, prompt_ids: list[int], model=None, tokenizer=None,
                 deadline: float | None = None, budget_s: float | None = None, clock: dict | None = None, **kw):
        super().__init__(alias, location or "", "text", **kw)
        self.prompt_ids, self.given, self.deadline, self.budget_s = prompt_ids, (model, tokenizer), deadline, budget_s
        self.clock = clock if clock is not None else {"level_s": 0.0}  # shared: the longest level so far
        self._level_start = 0.0

    def open(self) -> None:
        import torch

        model, tok = self.given
        if model is None:
            super().open()
        else:
            t0 = time.perf_counter()
            self.device = str(next(model.parameters()).device.type)
            if self.threads:
                torch.set_num_threads(self.threads)
            self.model, self.tokenizer = model, tok
            self.info.update(device=self.device, quant_method=None, threads=torch.get_num_threads(), dtype="bfloat16",
                             load_s=0.0, weights_bytes_loaded=int(model.get_memory_footprint()),
                             linear_kernel=self._linear_kernel())
            self._setup_compile()
            self.info["startup_s"] = time.perf_counter() - t0
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
        if self.device == "cuda" and self._compile_cfg is not None:
            self.info["opaque_linears"] = wrap_opaque(self.model)

    def _inputs(self, reqs, pad_to):
        import torch

        ids = torch.tensor([self.prompt_ids] * len(reqs), dtype=torch.long, device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def run(self, requests, concurrency, on_done=None):
        warm_up = on_done is None  # the runner's warm-up batch (where compiling happens) opens every level
        now = time.monotonic()
        if warm_up:
            if self.deadline is not None and now + self.clock["level_s"] > self.deadline:
                raise OverBudget(f"batch {concurrency} skipped: it would end after the {self.budget_s:.0f} s budget "
                                 f"(--gpu-check-budget; longest level so far {self.clock['level_s']:.0f} s)")
            self._level_start = now
        out = super().run(requests, concurrency, on_done)
        if not warm_up:
            self.clock["level_s"] = max(self.clock["level_s"], time.monotonic() - self._level_start)
        # generate() compiles silently or not at all: whether it made its compiled decode step is the proof
        self.info["compiled_call_made"] = hasattr(self.model, "_compiled_call")
        return out

    def close(self) -> None:
        model = self.model
        super().close()
        self.given = (None, None)  # the baseline is quantized next and then freed: hold no reference to it
        if model is not None and hasattr(model, "_compiled_call"):
            del model._compiled_call  # nor to its compiled graphs


class CheckRunner(Runner):
    """bench.runner's variant loop (warm-up batch, measured requests, memory samplers) with our engines."""

    def __init__(self, settings: Settings, argv: list[str], engines: dict):
        super().__init__(settings, argv, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        self.engines = engines

    def _make_engine(self, entry: dict):
        return self.engines[entry["alias"]]()


def measure(runner: CheckRunner, alias: str, location: str | None, engine: CheckEngine) -> dict:
    """One variant through the runner; a level skipped for the budget keeps the levels measured before it."""
    runner.engines[alias] = lambda: engine
    entry = {"alias": alias, "status": "pending", "location": location, "source": "local" if location else "memory",
             "variant": None, "modality": "text", "is_16bit": alias == ALIASES[0],
             "format": "bf16" if alias == ALIASES[0] else "autoround"}
    rec = runner.variant(entry)
    measured = (rec.get("runs") or {}).get("text") or {}
    over = rec["status"] != "ok" and (rec.get("reason") or "").startswith("batch ") and "budget" in rec["reason"]
    if over and measured:
        rec["skipped"], rec["status"], rec["reason"] = rec["reason"], "ok", None
        rec["memory"] = rec.get("memory") or {"device_peak_bytes": engine.device_peak_bytes(),
                                              "rss_peak_bytes": engine.rss_bytes()}  # RSS: at the end
    return rec


# ---------------------------------------------------------------- quantization

def quantize_rtn(model, tokenizer, device: str, work: Path) -> tuple[Path, dict]:
    """AutoRound RTN W4A16 of the model in memory (the `rtn` recipe), saved in auto_round format under `work`."""
    from quantize import calibration, export, recipes

    rec = recipes.get("rtn")
    kw = recipes.autoround_kwargs(rec, device=device)
    cal = calibration.prepare(None, tokenizer=tokenizer, nsamples=rec.nsamples, seqlen=rec.seqlen, local_corpus=True)
    kw.update(tokenizer=tokenizer, dataset=cal.dataset)
    t0 = time.perf_counter()
    found, timings = export.run_autoround(model, kw, ["autoround"], work / "export", work / "ar_work_space")
    wall = time.perf_counter() - t0
    folder = found["autoround"]
    export.float32_to_16bit(folder, "bfloat16")  # AutoRound saves fp32 on CPUs without bf16: as quantize does
    if not (folder / "tokenizer.json").is_file():
        tokenizer.save_pretrained(folder)
    shown = {k: v for k, v in kw.items() if k not in ("tokenizer", "dataset")}
    return folder, {"wall_s": wall, **timings, "recipe": rec.as_dict(), "autoround_kwargs": shown, "device": device,
                    "format": "auto_round", "calibration": cal.source}


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------- report

def level_rows(report: dict) -> list[dict]:
    """Per variant and batch size: decode tok/s per stream, output tok/s, prefill (mean TTFT), the per-step weight
    read limit and % of it (a decode step reads every weight once at any batch size), and x the bf16 baseline."""
    bw = (report.get("bandwidth") or {}).get("gb_s")
    base = {}
    rows = []
    for v in report.get("variants", []):
        if v.get("status") != "ok":
            continue
        bpt = (v.get("weights") or {}).get("bytes_per_token")
        for c, r in sorted(((v.get("runs") or {}).get("text") or {}).items(), key=lambda kv: int(kv[0])):
            tok_s = r.get("decode_tok_s_per_stream")
            rf = roofline.roofline(bpt, tok_s, bw)
            if v.get("is_16bit"):
                base.setdefault(c, r)
            b = base.get(c) or {}
            rows.append({"variant": v["alias"], "batch": int(c), "decode_tok_s": tok_s,
                         "output_tok_s": r.get("output_throughput"), "prefill_ms": r.get("mean_ttft_ms"),
                         "bytes_per_step": bpt, "limit_tok_s": rf["limit_tok_s"], "pct_of_limit": rf["pct_of_limit"],
                         "decode_x_bf16": _ratio(tok_s, b.get("decode_tok_s_per_stream")),
                         "prefill_x_bf16": _ratio(r.get("mean_ttft_ms"), b.get("mean_ttft_ms"))})
    return rows


def _ratio(a, b):
    return a / b if a is not None and b else None


def _f(x, nd: int = 1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def _gb(b) -> str:
    return "–" if b is None else f"{b / 1e9:.3g}"


def findings(report: dict) -> str:
    """This check's own figures, shown at the top of report.md."""
    g = report.get("gpu_check") or {}
    m = g.get("machine") or {}
    q = g.get("quantize") or {}
    L = [(f"GPU check, shape **{g.get('shape')}** ({(g.get('params') or 0) / 1e9:.3g} B params, random bf16 "
          f"weights built on {g.get('device')} in {_f(g.get('build_s'), 1)} s); one fixed prompt of "
          f"{INPUT_LEN} tokens, {OUTPUT_LEN} new tokens forced, batch {' and '.join(map(str, CONCURRENCY))}."), ""]
    L.append(f"- machine: {m.get('device_name')} ({_f(m.get('device_memory_gib'), 0)} GiB), torch {m.get('torch')} "
             f"(CUDA {m.get('cuda') or '–'}), transformers {m.get('transformers')}, auto-round {m.get('auto-round')}, "
             f"humming-kernels {m.get('humming-kernels') or '–'}, triton {m.get('triton') or '–'}")
    if q:
        L.append(f"- quantize: AutoRound RTN W4A16 (recipe {q['recipe']['name']}, sym, group 128) on {q.get('device')}: "
                 f"**{_f(q.get('wall_s'))} s** wall (load {_f(q.get('load_s'))} s, round + export "
                 f"{_f(q.get('tune_and_export_s'))} s), format {q.get('format')}"
                 + (f"; peak VRAM {_gb(q['peak_vram_bytes'])} GB, left allocated after it "
                    f"{_gb(q.get('allocated_after_bytes'))} GB" if q.get("peak_vram_bytes") else ""))
    bw = report.get("bandwidth") or {}
    L.append(f"- copy bandwidth {_f(bw.get('gb_s'), 0)} GB/s ({bw.get('tool')}; read + write bytes)")
    for v in report.get("variants", []):
        e = v.get("engine") or {}
        mem = v.get("memory") or {}
        peak = mem.get("device_peak_bytes") if g.get("device") == "cuda" else mem.get("rss_peak_bytes")
        bits = [(f"peak {'VRAM (torch.cuda.max_memory_allocated)' if g.get('device') == 'cuda' else 'RSS'} "
                 f"{_gb(peak)} GB"), f"weights {_gb((v.get('disk') or {}).get('weights_bytes'))} GB",
                f"kernel {e.get('linear_kernel')}", f"compile {e.get('compile')}"]
        for k in ("compile_mode", "compiled_call_made", "compile_note", "compile_forced_past_quantizer",
                  "opaque_linears", "load_s"):
            if e.get(k) not in (None, ""):
                bits.append(f"{k} {_f(e[k]) if isinstance(e[k], float) else e[k]}")
        for k in ("reason", "skipped"):
            if v.get(k):
                bits.append(f"**{k}: {v[k]}**")
        L.append(f"- {v['alias']} ({v.get('status')}): " + "; ".join(bits))
    for s in g.get("skipped") or []:
        L.append(f"- **skipped: {s}**")
    L += ["", ("| variant | batch | decode tok/s per stream | output tok/s | prefill ms (TTFT) | "
               "weights read per step GB | limit tok/s | % of limit | decode x bf16 | prefill x bf16 |"),
          "|" + "---|" * 10]
    for r in level_rows(report):
        L.append(f"| {r['variant']} | {r['batch']} | {_f(r['decode_tok_s'])} | {_f(r['output_tok_s'])} | "
                 f"{_f(r['prefill_ms'], 0)} | {_gb(r['bytes_per_step'])} | {_f(r['limit_tok_s'])} | "
                 f"{_f(r['pct_of_limit'], 0)}% | {_f(r['decode_x_bf16'], 2)} | {_f(r['prefill_x_bf16'], 2)} |")
    L += ["", ("limit tok/s = copy bandwidth / weight bytes read per decode step (the step reads every decoder weight "
               "and the LM head once at any batch size); % of limit = decode tok/s per stream / limit. "
               f"Stages (s from start): {', '.join(f'{k} {v:.0f}' for k, v in (g.get('stages') or {}).items())}.")]
    return "\n".join(L)


def machine_facts(device: str) -> dict:
    import importlib.metadata as md

    import torch

    out = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda}
    for p in ("transformers", "auto-round", "humming-kernels", "triton", "auto-round-lib", "datasets"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(device_name=p.name, device_memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
    else:
        from core.hardware import detect

        hw = detect()
        out.update(device_name=hw.cpu_model, device_memory_gib=hw.mem_total_gib, cores=hw.cores)
    return out


def _write(report: dict, out: Path, started: float, plots: bool = False) -> None:
    from bench.report import write

    report["duration_s"] = time.monotonic() - started
    report["notes"] = findings(report)
    write(report, out, overwrite=True, plots=plots)


# ---------------------------------------------------------------- the command

def main(args, argv: list[str]) -> int:
    out = Path(args.out) if args.out else Path("reports") / f"gpu-check-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists", "pass another --out, or --overwrite")
    budget = args.gpu_check_budget
    if budget is not None and budget <= 0:
        raise UserError(f"--gpu-check-budget must be positive seconds, got {budget:g}", "e.g. --gpu-check-budget 480")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}", "pass a positive --threads")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before AutoRound's CPU kernel library starts its pool
    started = time.monotonic()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.gpu_check_shape == "8b" and device != "cuda":
        raise UserError("the 8B shape needs a CUDA GPU (16 GB of bf16 weights, built on the device)",
                        "run it where a GPU is lent, or check the pipeline here with --gpu-check-shape small")
    backend = "humming" if (args.backend == "auto" and device == "cuda") else args.backend
    deadline = started + budget if budget else None
    stages: dict[str, float] = {}

    def stage(name: str) -> None:
        stages[name] = time.monotonic() - started
        log(name, started)

    log(f"shape {args.gpu_check_shape} on {device}; W4 backend {backend}; compile {args.compile}", started)
    tok, prompt = tokenizer_and_prompt()
    stage("tokenizer")
    t = time.perf_counter()
    model = build_model(text_config(args.gpu_check_shape, tok), device)
    if device == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t
    stage("model built")
    hw_cores = len(os.sched_getaffinity(0))
    bw = roofline.measure_bandwidth(device, hw_cores)
    stage("bandwidth")
    settings = Settings(models=list(ALIASES), engine="transformers", concurrency=CONCURRENCY, prompts=REQUESTS,
                        input_len=INPUT_LEN, output_len=OUTPUT_LEN, quality_prompts=0, compile=args.compile,
                        backend=backend, threads=args.threads, seed=0, debug=args.debug)
    runner = CheckRunner(settings, argv, {})
    report = {
        "schema": 1, "kind": "gpu-check",
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"engine": "transformers", "models": list(ALIASES), "concurrency": CONCURRENCY,
                     "prompts": REQUESTS, "input_len": INPUT_LEN, "output_len": OUTPUT_LEN,
                     "image": None, "quality_tokens": 0, "quality_prompts": [], "compile": args.compile,
                     "backend": backend, "threads": args.threads, "seed": 0, "budget_s": budget},
        "environment": environment(argv),
        "bandwidth": bw,
        "variants": [],
        "quality": {},
        "gpu_check": {"shape": args.gpu_check_shape, "config": SHAPES[args.gpu_check_shape], "device": device,
                      "params": sum(p.numel() for p in model.parameters()), "build_s": build_s,
                      "prompt_tokens": len(prompt), "machine": machine_facts(device), "stages": stages,
                      "skipped": []},
    }
    eng = {"compile": args.compile, "threads": args.threads, "deadline": deadline, "budget_s": budget,
           "clock": {"level_s": 0.0}}
    rec = measure(runner, ALIASES[0], None, CheckEngine(ALIASES[0], None, prompt, model=model, tokenizer=tok, **eng))
    rec["weights"] = model_weights(model)
    rec["disk"] = {"weights_bytes": sum(rec["weights"]["bytes_by_group"].values()), "folder_bytes": None,
                   "note": "not written to disk: the bytes of its tensors"}
    report["variants"].append(rec)
    stage("bf16 measured")
    _write(report, out, started)
    with tempfile.TemporaryDirectory(prefix="qwen-w4-gpu-check-") as tmp:
        if deadline is not None and time.monotonic() > deadline:
            report["gpu_check"]["skipped"].append(f"quantize and {ALIASES[1]}: past the {budget:.0f} s budget")
            del model
        else:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                folder, q = quantize_rtn(model, tok, device, Path(tmp))
            except Exception as e:  # noqa: BLE001 - recorded; the bf16 numbers still make a report
                if args.debug:
                    traceback.print_exc()
                folder, q = None, None
                why = one_line(f"{ALIASES[1]}: quantize failed: {type(e).__name__}: {e}")
                report["gpu_check"]["skipped"].append(why)
            del model
            _free(device)
            if q is not None:
                if device == "cuda":  # what quantizing took, and what is left before the W4 load (should be ~0)
                    q.update(peak_vram_bytes=torch.cuda.max_memory_allocated(),
                             allocated_after_bytes=torch.cuda.memory_allocated())
                report["gpu_check"]["quantize"] = q
                stage("quantized")
                _write(report, out, started)
                engine = CheckEngine(ALIASES[1], str(folder), prompt, backend=backend, **eng)
                report["variants"].append(measure(runner, ALIASES[1], str(folder), engine))
                stage("w4a16 measured")
        _free(device)
    report["bandwidth"] = roofline.combine_bandwidth(bw, roofline.measure_bandwidth(device, hw_cores))
    stage("bandwidth again")
    _write(report, out, started, plots=True)
    from bench.report import derive, headline_table

    print("\n".join(headline_table(report, derive(report))))
    print(f"report: {out}/report.md ({time.monotonic() - started:.0f} s)")
    ok = [v for v in report["variants"] if v["status"] == "ok"]
    if len(ok) < len(ALIASES):
        failed = [f"{v['alias']}: {v.get('reason')}" for v in report["variants"] if v["status"] != "ok"]
        raise UserError("the check is incomplete: " + ("; ".join(failed) or "; ".join(report["gpu_check"]["skipped"])),
                        f"see {out}/report.md", exit_code=1)
    return 0
