"""bench/tuning.py: the per block-iteration cost and the recipe estimates are arithmetic over two measured runs."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import tuning
from quantize import recipes


def test_per_block_iteration_and_recipe_scaling():
    a = SimpleNamespace(model="shape-text", blocks=2, iters=11, nsamples=8, seqlen=256, batch_size=4)
    r = tuning.report(a, [{"iters": 1, "wall_s": 30.0}, {"iters": 11, "wall_s": 70.0}], full_blocks=36)
    assert r["seconds_per_block_iteration"] == 2.0  # (70 - 30) / (2 blocks x 10 more iters)
    d = recipes.RECIPES["default"]
    scale = d.batch_size * d.seqlen / (4 * 256)
    assert r["recipes_estimate"]["default"]["tokens_per_step_x"] == pytest.approx(scale, abs=0.01)
    assert r["recipes_estimate"]["default"]["hours_estimate"] == pytest.approx(2.0 * scale * d.iters * 36 / 3600,
                                                                                abs=0.01)
    assert "rtn" not in r["recipes_estimate"]  # no tuning, nothing to estimate
    md = tuning.markdown(r)
    assert "2.0 s" in md and "| default | 200 |" in md
    with pytest.raises(tuning.UserError, match="too few iterations"):  # noise, not a cost: refused
        tuning.report(a, [{"iters": 1, "wall_s": 70.0}, {"iters": 11, "wall_s": 60.0}], full_blocks=36)


def test_bad_counts_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tuning.run_cli(tuning.main, ["--blocks", "0", "--out", str(tmp_path / "r")])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--blocks must be at least 1 and --iters at least 2" in err[0]
    assert not (tmp_path / "r").exists()
