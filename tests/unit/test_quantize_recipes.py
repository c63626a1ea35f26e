"""Recipe table and the flag -> AutoRound kwargs mapping (pure functions: no model, no AutoRound)."""
import pytest

from core.errors import UserError
from quantize import recipes
from quantize.__main__ import build_parser
from quantize.api import parse_formats, settings


def test_table_has_the_four_recipes_and_best_is_the_seeds():
    assert list(recipes.RECIPES) == ["best", "default", "light", "rtn"]
    best = recipes.RECIPES["best"]
    assert (best.iters, best.nsamples, best.seqlen, best.batch_size) == (1000, 512, 2048, 8)
    d = recipes.RECIPES["default"]
    assert (d.iters, d.nsamples, d.seqlen, d.batch_size) == (200, 128, 2048, 8)  # AutoRound's defaults
    assert recipes.RECIPES["rtn"].iters == 0 and recipes.RECIPES["rtn"].disable_opt_rtn
    light = recipes.RECIPES["light"]
    assert 0 < light.iters <= 50 and 128 <= light.seqlen <= 256


def test_overrides_rename_the_recipe_and_validate():
    r = recipes.get("light", iters=7, seqlen=None)
    assert r.iters == 7 and r.seqlen == recipes.RECIPES["light"].seqlen and r.name == "light(iters=7)"
    assert recipes.get("light") is recipes.RECIPES["light"]
    with pytest.raises(UserError, match="unknown recipe"):
        recipes.get("fastest")
    with pytest.raises(UserError, match="seqlen"):
        recipes.get("light", seqlen=0)
    with pytest.raises(UserError, match="iters"):
        recipes.get("light", iters=-1)
    # tuning requested on top of rtn: no longer plain RTN
    assert not recipes.get("rtn", iters=5).disable_opt_rtn


def test_only_w4_sym_g128():
    recipes.check_scheme(bits=4, group_size=128, sym=True, scheme="W4A16")
    with pytest.raises(UserError, match="asymmetric"):
        recipes.check_scheme(sym=False)
    with pytest.raises(UserError, match="8-bit"):
        recipes.check_scheme(bits=8)
    with pytest.raises(UserError, match="group size 64"):
        recipes.check_scheme(group_size=64)


def _kwargs(argv, cuda=False):
    a = build_parser().parse_args(argv)
    return settings(a.recipe, device=a.device, device_map=a.device_map, cuda_available=cuda, iters=a.iters,
                    nsamples=a.nsamples, seqlen=a.seqlen, batch_size=a.batch_size, lr=a.lr)


def test_cli_flags_map_to_autoround_kwargs():
    _, dev, kw = _kwargs(["--model", "x", "--recipe", "best", "--iters", "3", "--nsamples", "9",
                          "--seqlen", "64", "--batch-size", "2", "--device", "cpu"])
    assert dev == "cpu"
    assert kw["scheme"] == "W4A16" and kw["iters"] == 3 and kw["nsamples"] == 9 and kw["seqlen"] == 64
    assert kw["batch_size"] == 2 and kw["device_map"] == "cpu" and kw["enable_torch_compile"] is False
    assert kw["quant_nontext_module"] is False and kw["quant_lm_head"] is False
    assert "lr" not in kw and "dataset" not in kw  # AutoRound's own defaults
    # AutoRound's underscore spellings are accepted too
    _, _, kw2 = _kwargs(["--model", "x", "--recipe", "best", "--iters", "3", "--nsamples", "9", "--seq_len", "64",
                         "--batch_size", "2", "--device", "cpu"])
    assert kw2 == kw


def test_light_lr_and_rtn_flags():
    _, _, kw = _kwargs(["--model", "x", "--recipe", "light", "--device", "cpu"])
    assert kw["lr"] == 5e-3
    _, _, kw = _kwargs(["--model", "x", "--recipe", "rtn", "--device", "cpu"])
    assert kw["iters"] == 0 and kw["disable_opt_rtn"] is True and kw["disable_model_free"] is True


def test_device_and_multi_gpu_device_map():
    _, dev, kw = _kwargs(["--model", "x", "--device", "auto"], cuda=True)
    assert dev == "cuda" and kw["device_map"] == 0 and kw["enable_torch_compile"] is None
    _, dev, kw = _kwargs(["--model", "x", "--device", "cuda", "--device-map", "0,1,2"], cuda=True)
    assert kw["device_map"] == "0,1,2"
    _, dev, _ = _kwargs(["--model", "x"], cuda=False)
    assert dev == "cpu"
    with pytest.raises(UserError, match="no CUDA GPU"):
        _kwargs(["--model", "x", "--device", "cuda"], cuda=False)
    with pytest.raises(UserError, match="unknown device"):
        _kwargs(["--model", "x", "--device", "tpu"])


def test_formats():
    assert parse_formats("autoround,gptq,awq") == ["autoround", "gptq", "awq"]
    assert parse_formats("auto_round,auto_gptq,compressed-tensors,gptq") == ["autoround", "gptq", "compressed-tensors"]
    assert parse_formats("gptq,gguf") == ["gptq", "gguf"]
    with pytest.raises(UserError, match="unknown format 'exl2'"):
        parse_formats("gptq,exl2")
    with pytest.raises(UserError, match="no format"):
        parse_formats(",")
