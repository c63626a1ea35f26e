"""quantize/options.py: one run's options parsed and checked once, before any model is touched."""
from __future__ import annotations

import pytest

from core.errors import UserError
from quantize.options import QuantizeOptions


def test_from_call_parses_everything_once(tmp_path):
    o = QuantizeOptions.from_call("tiny-text", "auto_round,gguf", "rtn", iters=0, nsamples=8, gguf_type="Q4-0",
                                  output=str(tmp_path), device="cpu", verify=False)
    assert o.formats == ("autoround", "gguf") and o.safetensors_formats == ["autoround"] and o.has_gguf
    assert o.gguf_type == "q4_0" and o.recipe.nsamples == 8 and o.recipe.iters == 0
    assert o.dest_parent == tmp_path.resolve() and o.device == "cpu" and not o.verify
    assert o.command.startswith("python -m quantize --model tiny-text --formats autoround,gguf --recipe rtn")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"colour": "red"}, "unknown option(s): colour"),
    ({"bits": 8}, "8-bit weights are not supported"),
    ({"asym": True}, "symmetric"),
    ({"gguf_type": "q2_k"}, "unknown GGUF type 'q2_k'"),
    ({"dataset": "/no/such/file.txt"}, "calibration dataset not found"),
    ({"nsamples": 0}, "--nsamples must be at least 1"),
])
def test_bad_options_fail_before_anything_loads(kwargs, needle):
    with pytest.raises(UserError) as e:
        QuantizeOptions.from_call("tiny-text", "gptq", "default", **kwargs)
    assert needle in e.value.line(), e.value.line()


def test_push_with_gguf_is_refused_up_front():
    with pytest.raises(UserError, match="not supported for GGUF"):
        QuantizeOptions.from_call("tiny-text", "gptq,gguf", "default", push_to_hub="me/model")


def test_from_args_is_the_cli_parser():
    from quantize.__main__ import build_parser

    args = build_parser().parse_args(["--model", "tiny-vl", "--formats", "gptq,awq", "--recipe", "light",
                                      "--iters", "3", "--no-verify", "--device-map", "0,1"])
    o = QuantizeOptions.from_args(args, command="python -m quantize ...")
    assert (o.model, o.formats, o.recipe.iters, o.verify, o.device_map, o.command) == \
        ("tiny-vl", ("gptq", "awq"), 3, False, "0,1", "python -m quantize ...")
