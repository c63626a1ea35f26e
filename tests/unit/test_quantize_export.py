"""Staging and atomic placement (no partial output), and the GPTQ module-list annotation."""
import json
import os
import signal
import subprocess
import sys

import pytest

from quantize import export


def test_staging_is_removed_on_failure_and_ctrl_c(tmp_path):
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), export.Staging(tmp_path, "tiny-vl") as st:
            (st.path / "half-written").write_text("x")
            assert st.path.parent == tmp_path and st.path.name.startswith(".quantize-tiny-vl-")
            raise exc
        assert list(tmp_path.iterdir()) == []


def test_place_replaces_existing_only_at_the_end(tmp_path):
    old = tmp_path / "tiny-vl-gptq"
    old.mkdir()
    (old / "model.safetensors").write_text("old")
    with export.Staging(tmp_path, "tiny-vl") as st:
        new = st.path / "tiny-vl-gptq"
        new.mkdir()
        (new / "model.safetensors").write_text("new")
        assert (old / "model.safetensors").read_text() == "old"  # untouched while the run is in flight
        st.place({"gptq": new}, {"gptq": old})
    assert (old / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-vl-gptq"]


def test_hold_sigint_defers_ctrl_c():
    done = []
    with pytest.raises(KeyboardInterrupt), export.hold_sigint():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("renames finished")
    assert done == ["renames finished"]


def test_clean_stale_removes_only_dead_runs(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".quantize-tiny-vl-{dead_pid}-abc123").mkdir()
    live = tmp_path / f".quantize-tiny-vl-{os.getpid()}-def456"
    live.mkdir()
    export.clean_stale(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_gptq_config_names_its_4bit_modules(tmp_path):
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    (tmp_path / "quantization_config.json").write_text(json.dumps(qc))
    names = [f"model.language_model.layers.{i}.{m}" for i in range(2) for m in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    assert export.annotate_module_lists(tmp_path, "model.language_model.layers", names)
    for f in ("config.json", "quantization_config.json"):
        d = json.loads((tmp_path / f).read_text())
        q = d.get("quantization_config", d)
        assert q["block_name_to_quantize"] == "model.language_model.layers"
        assert q["modules_in_block_to_quantize"] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                                                     ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                                                     ["mlp.down_proj"]]
    # other formats are left alone
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    (tmp_path / "quantization_config.json").unlink()
    assert export.annotate_module_lists(tmp_path, "model.layers", names) == []


def test_exports_are_found_by_their_quant_method(tmp_path):
    for sub, method in (("auto-round-auto-gptq", "auto-round"), ("auto-gptq", "gptq"), ("auto-awq", "awq"),
                        ("llm-compressor-wint-a16", "compressed-tensors")):
        d = tmp_path / "m-w4g128" / sub
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": method}}))
    found = export.find_exports(tmp_path)
    assert {k: v.name for k, v in found.items()} == {"autoround": "auto-round-auto-gptq", "gptq": "auto-gptq",
                                                     "awq": "auto-awq", "compressed-tensors": "llm-compressor-wint-a16"}


def test_formats_are_packed_one_run_each_only_where_together_they_would_not_fit():
    from quantize.export import runs_per_format

    gib = 2**30
    assert not runs_per_format(int(1.2e9), ["autoround", "gptq", "awq"], 21 * gib)  # 0.6B shape: together
    assert runs_per_format(int(17.5e9), ["autoround", "gptq", "awq"], 21 * gib)  # the 8B VL shape on 24 GB: apart
    assert not runs_per_format(int(17.5e9), ["gptq"], 21 * gib)  # one format is one run anyway
    assert not runs_per_format(int(17.5e9), ["autoround", "gptq", "awq"], 120 * gib)  # a big machine: together
