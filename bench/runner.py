"""One benchmark run: every variant in turn through one engine; a failed variant is recorded, not fatal."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench import memory, quality, roofline, workload
from bench.engines import VariantFailed, make as make_engine, one_line
from bench.metrics import summarize
from core import artifact, catalog
from core.artifact import gguf_file, is_gguf
from core.errors import UserError
from core.hardware import detect, versions

ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU",
            "VLLM_CPU_INT4_W4A8", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE")


@dataclass
class Settings:
    models: list[str]
    engine: str = "vllm"
    endpoints: dict[str, str] = field(default_factory=dict)  # alias -> URL ("*" for every model)
    api_key: str | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 4])
    prompts: int = 8
    input_len: int = 128
    output_len: int = 64
    image: str | None = None
    quality_tokens: int = 32
    quality_prompts: int = len(workload.QUALITY_PROMPTS)
    server_args: list[str] = field(default_factory=list)
    force: bool = False
    compile: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    cpu_int4: list[str] = field(default_factory=list)  # vLLM CPU int4 paths to measure each W4A16 variant with
    seed: int | None = None  # where prompts start in the local text (None: random per run)
    debug: bool = False
    served_quality: bool = False  # --quality: teacher-forced KL etc. vs the family's 16-bit model (bench/served_quality)

    def requests_per_level(self, c: int) -> int:
        return max(self.prompts, c)


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


EXTRA_PACKAGES = ("auto-round-lib", "numpy", "matplotlib", "safetensors", "tokenizers")


def _versions() -> dict:
    import importlib.metadata as md

    out = dict(versions())
    for p in EXTRA_PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def environment(argv: list[str]) -> dict:
    hw = detect()
    return {
        "hardware": hw.as_dict(),
        "versions": _versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "command": "python -m bench " + shlex.join(argv),
    }


def _config(location: str | None) -> dict | None:
    """config.json of a local folder, or None (no folder, no config, unreadable)."""
    if not location:
        return None
    try:
        return artifact.read_config(location)
    except UserError:
        return None


def _is_16bit(location: str | None, v: catalog.Variant | None) -> bool:
    if v is not None:
        return not v.is_quantized
    from quantize import gguf

    if is_gguf(location):  # a GGUF folder carries its base's config: its decoder weights' type decides
        return gguf.is_16bit(gguf_file(Path(location)))
    cfg = _config(location)
    return cfg is not None and not artifact.quantization_config(cfg)


def _modality(location: str | None, v: catalog.Variant | None) -> str:
    if v is not None:
        return v.modality
    return "vl" if "vision_config" in (_config(location) or {}) else "text"


def _quant_method(location: str | None) -> str | None:
    if is_gguf(location):
        return "gguf"
    return artifact.quantization_config(_config(location) or {}).get("quant_method")


def _format(location: str | None, is_16bit: bool) -> str:
    """A folder's format (core/formats) where the catalog does not know it: GGUF, else its quant_method's."""
    if is_gguf(location):
        return "gguf"
    method = artifact.quantization_config(_config(location) or {}).get("quant_method")
    return "bf16" if is_16bit else (catalog.format_of_quant_method(method) if method else "?")


class Runner:
    def __init__(self, settings: Settings, argv: list[str], bar=None, log=None):
        self.s = settings
        self.argv = argv
        self.bar = bar
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.image = None
        self.variants: list[dict] = []  # the records so far (served quality picks each one's baseline among them)
        self.references: dict[str, list[dict]] = {}  # 16-bit alias -> its reference continuations
        if settings.seed is None:
            settings.seed = random.randrange(1_000_000)

    # ------------------------------------------------------------ plan

    def plan(self) -> list[dict]:
        """Resolve every model up front (a name that cannot be resolved becomes a failed entry)."""
        out = []
        for alias in self.s.models:
            entry = {"alias": alias, "status": "pending"}
            try:
                r = catalog.resolve(alias)  # a Hub id passes through: the engine downloads it (or fails, recorded)
                entry.update(location=r.location, source=r.source, variant=r.variant)
            except UserError as e:
                entry.update(status="failed", reason=one_line(e.line().removeprefix("error: ")), variant=None,
                             location=None, source=None)
            v = entry["variant"]
            loc = entry["location"] if entry.get("source") == "local" else None
            entry["modality"] = _modality(loc, v)
            entry["is_16bit"] = _is_16bit(loc, v) if (v or loc) else False
            entry["format"] = v.format.name if v else _format(loc, entry["is_16bit"])
            fmt = catalog.FORMATS.get(entry["format"])
            if self.s.cpu_int4 and entry["status"] != "failed" and fmt is not None and fmt.vllm_cpu_int4:
                # one measurement per kernel path (vLLM's CPUWNA16 formats), as separate variants "ALIAS@PATH"
                out += [{**entry, "alias": f"{alias}@{path}", "cpu_int4": path} for path in self.s.cpu_int4]
                continue
            out.append(entry)
        return out

    def steps(self, entry: dict) -> int:
        scen = 2 if (entry["modality"] == "vl") else 1
        return sum(self.s.requests_per_level(c) for c in self.s.concurrency) * scen + self.s.quality_prompts

    def warmups(self, level_index: int, c: int) -> int:
        """Unmeasured requests before a level: one per scenario for a server (first level), one full
        batch per level in process (it compiles / allocates for that batch size)."""
        if self.s.engine == "transformers":
            return c
        return 1 if level_index == 0 else 0

    def pool_size(self) -> int:
        return sum(self.warmups(i, c) + self.s.requests_per_level(c) for i, c in enumerate(self.s.concurrency))

    def _endpoint(self, alias: str) -> str | None:
        return self.s.endpoints.get(alias) or self.s.endpoints.get("*")

    # ------------------------------------------------------------ run

    def run(self) -> dict:
        s = self.s
        started = time.time()
        env = environment(self.argv if "--seed" in self.argv else [*self.argv, "--seed", str(s.seed)])
        plan = self.plan()
        if s.served_quality:  # each family's 16-bit model first: its continuations are the others' reference
            plan.sort(key=lambda e: not e["is_16bit"])
        if self.bar is not None:
            self.bar.total = sum(self.steps(e) for e in plan)
            self.bar.refresh()
        hw = detect()
        self._status("measuring memory bandwidth")
        bw = self._bandwidth(hw)
        self.image = workload.load_image(s.image) if any(e["modality"] == "vl" for e in plan) else None
        variants = self.variants
        for entry in plan:
            variants.append(self.variant(entry))
        self._status("measuring memory bandwidth again")
        bw = roofline.combine_bandwidth(bw, self._bandwidth(hw))
        report = {
            "schema": 1,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "duration_s": time.time() - started,
            "settings": {
                "engine": s.engine, "models": s.models, "concurrency": s.concurrency, "prompts": s.prompts,
                "input_len": s.input_len, "output_len": s.output_len, "image": s.image or "built-in test picture",
                "quality_tokens": s.quality_tokens,
                "quality_prompts": list(workload.QUALITY_PROMPTS[: s.quality_prompts]),
                "server_args": s.server_args, "force": s.force, "endpoints": s.endpoints,
                "compile": s.compile, "backend": s.backend, "threads": s.threads, "seed": s.seed,
            },
            "environment": env,
            "bandwidth": bw,
            "variants": variants,
        }
        if hasattr(os, "getloadavg"):
            report["environment"]["load_average_end"] = list(os.getloadavg())
        self._quality(report, plan)
        if s.served_quality:
            report["served_quality"] = self._served_quality_summary()
        return report

    def _bandwidth(self, hw) -> dict:
        bw = roofline.measure_bandwidth("cuda" if (hw.has_gpu and self.s.engine == "transformers") else "cpu",
                                        hw.cores)
        if self.s.engine == "vllm" and hw.has_gpu:
            bw = self._gpu_bandwidth() or bw
        return bw

    def _gpu_bandwidth(self) -> dict | None:
        """GPU copy bandwidth measured in a child process, so that this process holds no CUDA context
        (and no GPU memory) while vLLM sizes its KV cache from the free memory."""
        code = "import json; from bench.roofline import measure_bandwidth; print(json.dumps(measure_bandwidth('cuda')))"
        try:
            r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                               cwd=Path(__file__).resolve().parent.parent)
            return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None  # no CUDA torch beside a GPU vLLM: the CPU copy stands

    def _status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:60], refresh=True)
        else:
            self.log(f"[bench] {text}")

    def _advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def variant(self, entry: dict) -> dict:
        s = self.s
        alias = entry["alias"]
        rec = {k: entry.get(k) for k in ("alias", "location", "source", "modality", "format", "is_16bit", "cpu_int4")}
        fam = catalog.family_of(entry.get("variant"), entry.get("location") if entry.get("source") == "local" else None)
        rec["family"] = fam.base_alias if fam else None  # its own baseline
        recipe = artifact.read_report(entry["location"]).get("recipe") if entry.get("source") == "local" else None
        rec["recipe"] = {k: recipe.get(k) for k in ("name", "iters")} if isinstance(recipe, dict) else None
        rec.update(status="failed", reason=entry.get("reason"), runs={}, raw={}, memory={}, engine={}, answers=[])
        budget = self.steps(entry)
        done = 0
        if entry["status"] == "failed":
            self._advance(budget)
            return rec
        t0 = time.perf_counter()
        engine = None
        try:
            loc = entry["location"] if entry["source"] == "local" else None
            rec["quant_method"] = _quant_method(loc)
            if loc:
                rec["disk"] = memory.disk_bytes(loc)
                try:
                    rec["weights"] = roofline.weights(loc)
                except (OSError, ValueError) as e:
                    rec["weights"] = {"error": one_line(e)}
            tok = workload.load_tokenizer(loc)
            scenarios = workload.scenarios(entry["modality"], self.pool_size(), s.input_len, s.output_len, tok,
                                           self.image, seed=s.seed)
            engine = self._engine(entry)
            self._status(f"{alias}: starting {'llama.cpp' if entry.get('format') == 'gguf' else s.engine}")
            engine.open()
            rec["engine"] = engine.info
            gpu = detect().has_gpu and s.engine == "vllm"

            def tick(_result) -> None:
                nonlocal done
                done += 1
                self._advance()

            rss = memory.PeakSampler(engine.rss_bytes)
            dev = memory.PeakSampler(lambda: sum(memory.gpu_used_bytes() or [0]), interval_s=1.0) if gpu else None
            with contextlib.ExitStack() as samplers:
                samplers.enter_context(rss)
                if dev:
                    samplers.enter_context(dev)
                for sc in scenarios:
                    rec["runs"][sc.name], rec["raw"][sc.name] = {}, {}
                    pool = list(sc.requests)  # every request (warm-ups too) is sent once: no cache hits
                    for i, c in enumerate(s.concurrency):
                        warm = self.warmups(i, c)
                        if warm:
                            self._status(f"{alias}: {sc.name} c={c} warm-up")
                            engine.run(pool[:warm], c)
                            del pool[:warm]
                        n = s.requests_per_level(c)
                        reqs, pool = pool[:n], pool[n:]
                        self._status(f"{alias}: {sc.name} c={c}")
                        results, dur = engine.run(reqs, c, on_done=tick)
                        summary = summarize(results, dur)
                        summary["concurrency"] = c
                        summary["requested_output_len"] = s.output_len
                        rec["runs"][sc.name][str(c)] = summary
                        rec["raw"][sc.name][str(c)] = [r.as_dict() for r in results]
                        if summary["completed"] == 0:
                            why = engine.failure_reason() or (summary.get("errors") or ["every request failed"])[0]
                            raise VariantFailed(why)
                self._status(f"{alias}: quality prompts")
                for p in workload.QUALITY_PROMPTS[: s.quality_prompts]:
                    rec["answers"].append(engine.answer(p, s.quality_tokens))
                    done += 1
                    self._advance()
                if s.served_quality:
                    self._status(f"{alias}: served quality (teacher-forced)")
                    try:
                        rec["served_quality"] = self._served_quality(entry, rec, engine, tok)
                    except Exception as e:  # noqa: BLE001 - a scoring failure is this variant's reason, not its end
                        if s.debug:
                            traceback.print_exc()
                        rec["served_quality"] = {"reason": one_line(f"{type(e).__name__}: {e}")}
            rec["memory"] = {"rss_after_start_bytes": rss.first, "rss_peak_bytes": rss.peak,
                             "rss_samples": rss.samples, "device_peak_bytes": engine.device_peak_bytes()}
            if dev:
                rec["memory"]["gpu_used_peak_bytes"] = dev.peak
            if hasattr(engine, "weights_gib_logged"):
                rec["memory"]["vllm_weights_gib"] = engine.weights_gib_logged()
            if engine.info.get("started_by_bench"):
                rec["plan"] = self._planned(entry, engine.info, rss.peak)
            rec["status"], rec["reason"] = "ok", None
        except UserError as e:
            rec["reason"] = one_line(e.line().removeprefix("error: "))
        except VariantFailed as e:
            rec["reason"] = one_line(str(e))
        except Exception as e:  # noqa: BLE001 - one variant's failure is a result, the run goes on
            if s.debug:
                traceback.print_exc()
            why = engine.failure_reason() if engine is not None else None
            rec["reason"] = why or one_line(f"{type(e).__name__}: {e}")
        finally:
            if engine is not None:
                rec["engine"] = engine.info
                self._status(f"{alias}: stopping")
                engine.close()
            rec["wall_s"] = time.perf_counter() - t0
            self._advance(max(0, budget - done))
            self.log(f"[bench] {alias}: {rec['status']}" + (f" ({rec['reason']})" if rec["reason"] else ""))
        return rec

    def _served_quality(self, entry: dict, rec: dict, engine, tok) -> dict:
        """This variant's teacher-forced scores on its baseline's reference (bench/served_quality.py). The first 16-bit
        model of a family that runs makes the reference (its own greedy continuations) and is scored on it too."""
        from bench import served_quality as sq
        from bench.report import baseline_of

        if tok is None:
            return {"reason": "no tokenizer beside the model: its prompts cannot be rendered as token ids"}
        server = engine.info.get("server")
        kind = {"vLLM": "vllm", "llama.cpp": "llama.cpp"}.get(server) or sq.detect_kind(engine.base_url, engine.api_key)
        scorer = sq.Scorer(engine.base_url, engine.model, kind, engine.api_key, engine.info.get("context"),
                           chat_prefill=entry["modality"] == "vl")
        base = baseline_of({"variants": self.variants}, rec["family"])
        base_rec = next((v for v in self.variants if v["alias"] == base), None)
        if rec["is_16bit"] and (base is None or (rec["family"] and base_rec.get("family") != rec["family"])):
            self.references[rec["alias"]] = sq.references(scorer, entry["modality"], tok, self.image)
            base = rec["alias"]
        if base is None:
            return {"reason": "no 16-bit model of its family ran: nothing to compare with (add it to --models)"}
        base_rec = next((v for v in self.variants if v["alias"] == base), None)
        if base_rec is not None and base_rec.get("modality") not in (None, entry["modality"]):
            return {"reason": f"no 16-bit {entry['modality']} model of its family ran (the first 16-bit model, {base}, "
                              f"is {base_rec.get('modality')}): add its base to --models"}
        refs = self.references.get(base)
        if refs is None:
            return {"baseline": base, "reason": f"its baseline {base} made no reference"}
        out = sq.score_variant(scorer, refs, tok, self.image)
        out["baseline"] = base
        if not out["positions"]:
            out["reason"] = "; ".join(f"{k}: {v}" for k, v in out["errors"].items()) or "no position could be scored"
        return out

    def _served_quality_summary(self) -> dict:
        from bench import served_quality as sq

        problems = []
        if not any(v.get("is_16bit") and v["status"] == "ok" for v in self.variants):
            problems.append("no 16-bit model ran among --models: served quality has no baseline to compare with "
                            "(add the family's 16-bit model, e.g. --models tiny-text,tiny-text-gptq)")
        for base, refs in self.references.items():
            problems += [f"{base}: prompt {r['prompt']}: {r['error']}" for r in refs if r.get("error")]
        return {"k": sq.K, "new_tokens": sq.NEW_TOKENS, "llamacpp_logprobs": sq.LLAMACPP_LOGPROBS,
                "tail_rule": sq.TAIL_RULE, "references": self.references, "problems": problems}

    def _planned(self, entry: dict, info: dict, rss_peak: int | None) -> dict:
        """What `python -m serve --plan` predicts for this server (its context, KV space, the top concurrency),
        beside the peak RSS measured: the plan's error is part of the report."""
        from serve import fit

        name = entry["alias"].split("@")[0] if entry["alias"].split("@")[0] in catalog.VARIANTS else entry["location"]
        try:
            p = fit.predict(name, detect(), concurrency=max(self.s.concurrency), max_model_len=info.get("context"),
                            kv_cache_gib=info.get("kv_cache_gib"))
        except (UserError, OSError, ValueError, KeyError) as e:
            return {"error": one_line(e)}
        if rss_peak and p["predicted_bytes"]:
            p["measured_over_predicted"] = rss_peak / p["predicted_bytes"]
        return p

    def _engine(self, entry: dict):
        engine = self._make_engine(entry)
        engine.debug = self.s.debug
        return engine

    def _make_engine(self, entry: dict):
        s = self.s
        if s.engine == "vllm":
            return make_engine("vllm", entry["alias"], entry["location"], entry["modality"],
                               endpoint=self._endpoint(entry["alias"]), api_key=s.api_key,
                               server_args=tuple(s.server_args), force=s.force, threads=s.threads,
                               cpu_int4=entry.get("cpu_int4"))
        return make_engine("transformers", entry["alias"], entry["location"], entry["modality"],
                           compile=s.compile, backend=s.backend, threads=s.threads)

    def _quality(self, report: dict, plan: list[dict]) -> None:
        """Greedy answers of each variant against its own family's 16-bit model (bench.report.baseline_of)."""
        from bench.report import baseline_of

        answers = {v["alias"]: v["answers"] for v in report["variants"] if v["status"] == "ok" and v["answers"]}
        report["quality"] = {}
        for fam in dict.fromkeys(v.get("family") for v in report["variants"]):
            base = baseline_of(report, fam)
            if base is None or base not in answers:
                continue
            mine = {a: t for a, t in answers.items()
                    if a == base or next(v for v in report["variants"] if v["alias"] == a).get("family") == fam}
            loc = next((e["location"] for e in plan if e["alias"] == base and e.get("source") == "local"), None)
            for a, q in quality.compare(mine, base, workload.load_tokenizer(loc)).items():
                report["quality"].setdefault(a, {**q, "baseline": base})
