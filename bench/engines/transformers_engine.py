"""transformers in process, for machines where vLLM cannot be installed.

No engine of our own: `generate()` with transformers' static KV cache and its compiled decode step
(`CompileConfig`; on a GPU `mode="reduce-overhead"`, i.e. CUDA graphs), and for W4A16 checkpoints
AutoRound's loader with `backend="auto"`, which picks the fastest kernel installed for the device
(Marlin/humming/Triton on GPU; its `ark` CPU kernel when auto-round-lib is installed, else torch).
Concurrency N means batches of N requests (padded to one fixed length so that the compiled graphs
are reused); every sequence's tokens are timestamped by a streamer as they come out.
"""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable

from bench.engines.base import Engine, VariantFailed, one_line
from bench.metrics import RequestResult
from bench.workload import Request
from core import artifact
from core.errors import UserError
from core.formats import for_quant_method


class _Clock:
    """A transformers streamer that timestamps every decoding step (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(self, alias: str, location: str, modality: str, compile: str = "auto",
                 backend: str = "auto", device: str | None = None, threads: int | None = None):
        super().__init__(alias, location, modality)
        self.threads = threads
        self.compile_mode = compile  # auto | on | off
        self.backend = backend
        self.device = device
        self.model = None
        self.processor = None
        self.tokenizer = None
        self._compile_cfg = None
        self._pad_len: dict[str, int] = {}

    # ------------------------------------------------------------ loading

    def _quant_method(self) -> str | None:
        try:
            qc = artifact.quantization_config(artifact.read_config(self.location))
        except UserError:  # no folder (a Hub id) or no readable config.json
            return None
        m = str(qc.get("quant_method", "")).lower().replace("_", "-")
        return m or None

    def open(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        t0 = time.perf_counter()
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.threads:
            torch.set_num_threads(self.threads)
        kw: dict = {"dtype": torch.bfloat16}
        method = self._quant_method()
        via_autoround = method is not None and for_quant_method(method).autoround_config  # core/formats
        if via_autoround:
            try:
                from transformers import AutoRoundConfig
            except ImportError:  # older transformers
                from auto_round import AutoRoundConfig
            kw["quantization_config"] = AutoRoundConfig(backend=self.backend)
        if self.device == "cuda":
            kw["device_map"] = "cuda"
        cls = AutoModelForImageTextToText if self.modality == "vl" else AutoModelForCausalLM
        self.model = cls.from_pretrained(self.location, **kw).eval()
        if self.device != "cuda":
            self.model.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.location)
        self.tokenizer.padding_side = "left"
        if self.modality == "vl":
            self.processor = AutoProcessor.from_pretrained(self.location)
            self.processor.tokenizer.padding_side = "left"
        self.info.update(device=self.device, quant_method=method, threads=torch.get_num_threads(),
                         omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                         dtype="bfloat16", load_s=time.perf_counter() - t0,
                         weights_bytes_loaded=int(self.model.get_memory_footprint()),
                         linear_kernel=self._linear_kernel())
        if via_autoround:
            self.info["autoround_backend_requested"] = self.backend
            kernel = self.info["linear_kernel"]
            if ".fake." in kernel or kernel.endswith(".Linear"):
                raise VariantFailed(f"AutoRound has no {self.device.upper()} kernel installed for this {method} "
                                    f"checkpoint: it loaded {kernel}, which cannot run it "
                                    "(on CPU, the auto-round-lib package provides one)")
        self._setup_compile()
        self.info["startup_s"] = time.perf_counter() - t0
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _linear_kernel(self) -> str:
        """The class running the first decoder projection (shows which W4 kernel AutoRound chose)."""
        for name, mod in self.model.named_modules():
            if name.endswith("q_proj"):
                return f"{type(mod).__module__}.{type(mod).__name__}"
        return "?"

    def _setup_compile(self) -> None:
        from transformers import CompileConfig

        on_gpu = self.device == "cuda"
        self.info["compile"] = False
        if self.compile_mode == "off":
            self.info["compile_note"] = "off (--compile off)"
            return
        if self.compile_mode == "auto" and not on_gpu:
            # measured on 2-core CPUs: inductor's CPU decode step was no faster than eager (tiny models:
            # slower) and costs ~40 s of compiling per batch size; --compile on forces it
            self.info["compile_note"] = "off on CPU (--compile auto; --compile on forces it)"
            return
        cfg = CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead" if on_gpu else "default")
        if not on_gpu:
            cfg._compile_all_devices = True  # transformers compiles only on accelerators unless told
        q = getattr(self.model, "hf_quantizer", None)
        if q is not None and not q.is_compileable:
            # generate() silently skips compilation for AutoRound-loaded models; compile them anyway
            # and fall back to eager (recorded) if their kernels cannot be traced.
            q.__class__ = type(type(q).__name__, (type(q),), {"is_compileable": property(lambda self: True)})
            self.info["compile_forced_past_quantizer"] = True
        self._compile_cfg = cfg
        self.info.update(compile=True, compile_mode=cfg.mode, cache="static")

    # ------------------------------------------------------------ generation

    def _inputs(self, reqs: list[Request], pad_to: int | None):
        if self.modality == "vl":
            msgs = []
            images = []
            for r in reqs:
                content = ([{"type": "image"}] if r.image is not None else []) + [{"type": "text", "text": r.text}]
                msgs.append([{"role": "user", "content": content}])
                if r.image is not None:
                    images.append(r.image)
            texts = [self.processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
            kw = {"text": texts, "images": images or None, "return_tensors": "pt", "padding": True}
            if pad_to:
                kw.update(padding="max_length", max_length=pad_to)
            return self.processor(**kw).to(self.device)
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": r.text}], tokenize=False,
                                                    add_generation_prompt=True) for r in reqs]
        kw = {"return_tensors": "pt", "padding": True, "add_special_tokens": False}
        if pad_to:
            kw.update(padding="max_length", max_length=pad_to)
        return self.tokenizer(texts, **kw).to(self.device)

    def _pad_length(self, requests: list[Request]) -> int:
        """One prompt length for a whole scenario, so the compiled graphs see one shape per batch size."""
        key = f"{len(requests)}:{requests[0].image is not None}:{hash(requests[0].text)}"
        if key not in self._pad_len:
            self._pad_len[key] = max(int(self._inputs([r], None)["attention_mask"].sum()) for r in requests)
        return self._pad_len[key]

    def _generate(self, inputs, max_new: int, min_new: int | None, streamer=None, compiled: bool = True):
        import torch

        kw = {"max_new_tokens": max_new, "do_sample": False, "streamer": streamer}
        if min_new:
            kw["min_new_tokens"] = min_new
        if not compiled:
            with torch.inference_mode():
                return self.model.generate(**inputs, **kw)
        if self._compile_cfg is not None:
            kw.update(cache_implementation="static", compile_config=self._compile_cfg)
        with torch.inference_mode():
            try:
                return self.model.generate(**inputs, **kw)
            except Exception as e:  # a kernel that cannot be compiled: run eagerly, say so
                if self._compile_cfg is None:
                    raise
                self._compile_cfg = None
                self.info.update(compile=False, compile_note=one_line(f"compile failed, ran eager: {type(e).__name__}: {e}"))
                torch._dynamo.reset()
                if streamer is not None:
                    streamer.__init__()
                kw.pop("cache_implementation", None)
                kw.pop("compile_config", None)
                return self.model.generate(**inputs, **kw)

    def run(self, requests: list[Request], concurrency: int,
            on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
        pad_to = self._pad_length(requests)
        results: list[RequestResult] = []
        t_all = time.perf_counter()
        for b in range(0, len(requests), concurrency):
            batch = requests[b:b + concurrency]
            if len(batch) < concurrency:  # keep the compiled batch shape: fill with copies, drop their results
                batch = batch + [batch[-1]] * (concurrency - len(batch))
            n_real = min(concurrency, len(requests) - b)
            inputs = self._inputs(batch, pad_to)
            clock = _Clock()
            start = time.perf_counter()
            try:
                self._generate(inputs, batch[0].output_len, batch[0].output_len, clock)
                err = None
            except Exception as e:  # noqa: BLE001 - a failed batch is recorded, not raised
                if self.debug:
                    traceback.print_exc()
                err = one_line(f"{type(e).__name__}: {e}")
            prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()
            for i in range(n_real):
                if err or not clock.times:
                    r = RequestResult(False, start_s=start, error=err or "no tokens generated")
                else:
                    t = clock.times
                    r = RequestResult(True, ttft_s=t[0] - start, latency_s=t[-1] - start, output_tokens=len(t),
                                      prompt_tokens=int(prompt_lens[i]),
                                      itl_s=[t[k] - t[k - 1] for k in range(1, len(t))], start_s=start)
                results.append(r)
                if on_done:
                    on_done(r)
        return results, time.perf_counter() - t_all

    def answer(self, prompt: str, max_tokens: int) -> str:
        inputs = self._inputs([Request(prompt, max_tokens)], None)
        out = self._generate(inputs, max_tokens, None, compiled=False)  # same greedy tokens, no recompiles
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    # ------------------------------------------------------------ measurements

    def rss_bytes(self) -> int | None:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss

    def device_peak_bytes(self) -> int | None:
        import torch

        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return None

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()
        try:
            import torch

            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001, S110 - freeing caches on close is best effort
            pass
