"""How a GPU plan spreads one model over GPUs and machines, and why (`python -m serve --plan --gpu 4xl40s`).

Rules, in order (`choose`):
- one card holds the model at the requested context x concurrency: no tensor parallel; several GPUs become
  data-parallel replicas (`--data-parallel-size N`: vLLM starts N engines behind one API server and balances
  requests over them itself); more machines (`--nodes K`) add replicas, not room, so each runs the same command;
- it does not fit one card: the smallest tensor-parallel size TP <= N that vLLM accepts for the model
  (`tp_problem`) and that fits; leftover GPUs become replicas (DP = N // TP);
- it does not fit one machine and `--nodes K` > 1: pipeline parallel over the machines (PP = K stages, TP within
  each), vLLM's Ray executor (`--distributed-executor-backend ray`) on a Ray cluster (`ray_steps`);
- nothing fits: the reason in numbers (the caller offers the 4-bit variant, as on a CPU).

Memory per GPU (`per_gpu`): vLLM shards every linear, the embedding, the LM head and the vision tower by TP and
the decoder layers by PP (the first stage also holds the embedding and the vision tower, the last the LM head);
norms stay replicated (a few MB, ignored). The KV cache is split by KV head (up to the number of KV heads: beyond it
vLLM replicates them) and by layer stage.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from core.formats.base import GROUP_SIZE

RAY_PORT = 6379  # `ray start --head`'s default port


@dataclass(frozen=True)
class Layout:
    """Tensor x pipeline parallel per model replica, data-parallel replicas, on `nodes` machines of `gpus` each."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    nodes: int = 1
    gpus: int = 1  # GPUs per machine
    why: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shards(self) -> int:
        return self.tp * self.pp

    def serve_flags(self) -> list[str]:
        """The `python -m serve` flags of this layout (the same names as vLLM's)."""
        out = []
        if self.tp > 1:
            out += ["--tensor-parallel-size", str(self.tp)]
        if self.pp > 1:
            out += ["--pipeline-parallel-size", str(self.pp), "--distributed-executor-backend", "ray"]
        if self.dp > 1:
            out += ["--data-parallel-size", str(self.dp)]
        return out

    def label(self) -> str:
        parts = [f"TP={self.tp}"] + ([f"PP={self.pp}"] if self.pp > 1 else []) + [f"DP={self.dp}"]
        return " ".join(parts)


def _text(cfg: dict) -> dict:
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def tp_problem(cfg: dict, tp: int, w4a16: bool) -> str | None:
    """Why vLLM refuses tensor-parallel size `tp` for this config (None: it takes it). vLLM 0.32's rules: the
    attention heads divide by TP (config/model.py verify_with_parallel_config); KV heads divide by TP, or TP by them
    (then they are replicated: models/qwen3.py Qwen3Attention); the vision tower's heads divide by TP (its attention
    is sharded too unless --mm-encoder-tp-mode data); a W4A16 row-parallel linear's input slice (o_proj: heads x
    head_dim / TP, down_proj: intermediate / TP) holds whole groups of 128 (kernels/linear/mixed_precision/marlin.py:
    "in_features per partition ... is not divisible by group_size": a group cannot straddle TP ranks)."""
    if tp == 1:
        return None
    t = _text(cfg)
    heads = int(t["num_attention_heads"])
    kv = int(t.get("num_key_value_heads") or heads)
    hd = int(t.get("head_dim") or int(t["hidden_size"]) // heads)
    inter = int(t["intermediate_size"])
    if heads % tp:
        return f"{heads} attention heads do not divide by {tp}"
    if (kv % tp if kv >= tp else tp % kv):
        return f"{kv} KV heads and TP {tp}: neither divides the other"
    vc = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else None
    if vc and int(vc.get("num_heads") or 1) % tp:
        return f"the vision tower's {vc['num_heads']} heads do not divide by {tp}"
    if w4a16:
        for what, size in (("o_proj", heads * hd), ("down_proj", inter)):
            if size % tp or (size // tp) % GROUP_SIZE:
                return (f"W4A16: {what}'s input {size} / {tp} = {size / tp:g} is not a multiple of the group size "
                        f"{GROUP_SIZE}")
    return None


def per_gpu(groups: dict[str, int], cfg: dict, tp: int, pp: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes per token) on the fullest GPU of a TP x PP layout, from the whole model's
    weight bytes by part and its bf16 KV bytes per token (serve.args.kv_bytes_per_token)."""
    from serve.args import kv_bytes_per_token

    t = _text(cfg)
    total = sum(groups.values())
    if pp == 1:
        w = total
    else:
        body = groups.get("decoder_linear", 0) + groups.get("other", 0)
        first = groups.get("embedding", 0) + groups.get("vision", 0)
        last = groups.get("lm_head", 0) or groups.get("embedding", 0)  # a tied head: the table again
        w = body / pp + max(first, last)
    layers = int(t["num_hidden_layers"])
    kv_heads = int(t.get("num_key_value_heads") or t["num_attention_heads"])
    kv = (kv_bytes_per_token(t) or 0) * math.ceil(layers / pp) / layers / min(tp, kv_heads)
    return math.ceil(w / tp), math.ceil(kv)


def choose(plan_at: Callable, cfg: dict, w4a16: bool, gpus: int, nodes: int = 1,
           explain: Callable = lambda p: p.status) -> tuple[object, Layout]:
    """The plan and layout for `gpus` GPUs per machine on `nodes` machines. `plan_at(layout)` is the memory plan
    (serve.fit.make_plan) of one replica of that layout: its `.status` is fits | short | no, `.max_context` the
    longest context per sequence; `explain(plan)` says in numbers why a plan does not hold the context."""
    def done(tp: int, pp: int, dp: int, why: list[str]) -> tuple[object, Layout]:
        lay = Layout(tp, pp, dp, nodes, gpus, tuple(why))
        return plan_at(lay), lay

    one = plan_at(Layout(1, 1, 1, nodes, gpus))
    if one.status == "fits":
        why = ["fits one card at the requested context: no tensor parallel (it would only add all-reduce traffic)"]
        if gpus > 1:
            why.append(f"{gpus} GPUs: {gpus} data-parallel replicas behind one endpoint (--data-parallel-size "
                       f"{gpus}: vLLM's own load balancing; batch-1 speed per request is one card's)")
        if nodes > 1:
            why.append(f"{nodes} machines: each runs this same command (more replicas, not more room); put a load "
                       "balancer in front, no Ray needed")
        return done(1, 1, gpus, why)
    valid = [t for t in range(1, gpus + 1) if tp_problem(cfg, t, w4a16) is None]
    skipped = [f"TP={t}: {tp_problem(cfg, t, w4a16)}" for t in range(2, gpus + 1) if t not in valid]
    tried = [one]
    for tp in valid[1:]:
        tried.append(plan_at(Layout(tp, 1, 1, nodes, gpus)))
        if tried[-1].status == "fits":
            tp_why = (f"one card is not enough ({explain(one)}): tensor parallel over {tp} GPUs, the smallest TP "
                      "that fits and that vLLM accepts for this model")
            why = [tp_why, *skipped]
            if gpus // tp > 1:
                why.append(f"{gpus} GPUs / TP {tp}: {gpus // tp} data-parallel replicas of {tp} GPUs each")
            elif gpus % tp:
                why.append(f"{gpus % tp} GPU(s) left idle (TP {tp} x 1 replica)")
            return done(tp, 1, gpus // tp, why)
    node = tried[-1]  # the most one machine holds
    for tp in valid if nodes > 1 else []:
        tried.append(plan_at(Layout(tp, nodes, 1, nodes, gpus)))
        if tried[-1].status == "fits":
            pp_why = (f"one machine of {gpus} GPU(s) is not enough ({explain(node)}): pipeline parallel over "
                      f"{nodes} machines (one stage of the decoder layers each) x tensor parallel {tp} within each, "
                      "on a Ray cluster")
            why = [pp_why, *skipped]
            return done(tp, nodes, 1, why)
    best = max(tried, key=lambda p: (p.max_context, p.parallel.shards))  # nothing fits: the most GPUs tried
    b = best.parallel
    verdict = "fits only a short context" if best.status == "short" else "does not fit"
    why = [f"{verdict} on {gpus * nodes} GPU(s), best layout {b.label()}: {explain(best)}", *skipped]
    return done(b.tp, b.pp, gpus // b.tp if b.pp == 1 and best.status == "short" else 1, why)


def ray_steps(serve_command: str, nodes: int) -> list[str]:
    """What to run where for a multi-machine layout: Ray on every machine, then serve on the head."""
    others = (f"on the other {nodes - 1} machine(s): ray start --address=HEAD_IP:{RAY_PORT}   (the same venv and "
              "model path / HF cache on every machine)")
    return [f"on the head machine:      ray start --head --port={RAY_PORT}", others,
            f"then on the head machine: {serve_command}"]
