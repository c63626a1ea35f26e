"""GPU classes (core/gpus.py), the multi-GPU layout (serve/parallel.py, serve/fit.gpu_plan), serve's
--data-parallel-size, predicted decode speed (bench/predict.py) and `python -m bench --predict`, and the README's
"Which GPU, how many" table, which must equal what its command prints."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import predict, predict_report, roofline
from bench.report import derive, headline_table
from core import gpus, shapes
from core.errors import UserError
from core.hardware import Gpu, Hardware
from serve import fit, parallel
from serve.args import ModelInfo, ServeOptions, vllm_command

REPO = Path(__file__).resolve().parents[2]
HOST = Hardware("planning host", 16, ("avx2",), 128.0, 120.0, ())
VL8 = shapes.config_dict("qwen3-vl-8b-instruct")
T4B = shapes.config_dict("qwen3-4b-instruct-2507")


def env(tmp_path):
    return {**os.environ, "QWEN_W4_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.fixture(autouse=True)
def _empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_W4_HOME", str(tmp_path))
    monkeypatch.delenv("QWEN_W4_API_KEY", raising=False)


def plan(alias: str, spec: str, nodes: int = 1, **kw) -> fit.Plan:
    return fit.gpu_plan(fit.subject(alias), HOST, gpus.parse(spec), nodes=nodes, **kw)


# ---------------------------------------------------------------- core/gpus.py

@pytest.mark.parametrize("spec, key, count", [
    ("l40s", "l40s", 1), ("4xl40s", "l40s", 4), ("4x RTX 4090", "rtx4090", 4), ("2 x rtx-4090", "rtx4090", 2),
    ("RTX_3090", "rtx3090", 1), ("h100", "h100", 1), ("H100-SXM", "h100", 1), ("a100-80g", "a100-80gb", 1),
    ("A100 40GB", "a100-40gb", 1), ("NVIDIA H100 80GB HBM3", "h100", 1), ("8*H200", "h200", 8), ("t4", "t4", 1),
    ("RTX A6000", "rtx-a6000", 1), ("a6000", "rtx-a6000", 1), ("NVIDIA GeForce RTX 4090", "rtx4090", 1),
])
def test_gpu_names_parse(spec, key, count):
    got = gpus.parse(spec)
    c = gpus.find(key)
    assert got == [c.gpu] * count and gpus.class_of(got[0]) is c


def test_nvidia_smi_form_still_works_and_takes_a_count():
    assert gpus.parse("NVIDIA L4, 23034, 8.9") == [Gpu("NVIDIA L4", 22.5, (8, 9))]
    assert gpus.parse("2x Tesla T4, 15360, 7.5") == [Gpu("Tesla T4", 15.0, (7, 5))] * 2
    assert gpus.class_of(gpus.parse("NVIDIA A100-SXM4-80GB, 81920, 8.0")[0]).key == "a100-80gb"  # by its smi name
    assert gpus.class_of(Gpu("NVIDIA A100-PCIE-40GB", 39.4, (8, 0))) is None  # not in the table: no bandwidth


@pytest.mark.parametrize("spec, needle", [
    ("l40z", "error: unknown GPU 'l40z' — use one of t4, a10, l4,"),
    ("4x b200", "error: unknown GPU 'b200' — use one of"),
    ("a100", "error: --gpu 'a100' is ambiguous — use one of a100-40gb, a100-80gb"),
    ("0xl4", "asks for 0 GPUs"),
    ("garbage, here", "is not 'NAME, MiB, X.Y'"),
])
def test_gpu_spec_errors_are_one_line(spec, needle):
    with pytest.raises(UserError) as e:
        gpus.parse(spec)
    assert needle in e.value.line() and "\n" not in e.value.line()


def test_gpu_table_is_complete_and_its_numbers_are_the_vendors():
    keys = {c.key for c in gpus.CLASSES}
    assert {"rtx3090", "rtx4090", "rtx-a6000", "l4", "l40", "l40s", "a10", "a100-40gb", "a100-80gb", "h100", "h200",
            "t4"} <= keys
    for c in gpus.CLASSES:
        # nvidia-smi's GiB within 7% of the marketed "GB" (which is GiB on some cards, 10^9 B on others)
        assert abs(c.memory_mib / 1024 - c.vendor_gb) < 0.07 * c.vendor_gb and c.bandwidth_gb_s > 0, c.key
    bw = {c.key: c.bandwidth_gb_s for c in gpus.CLASSES}
    assert (bw["h100"], bw["h200"], bw["l40s"], bw["l4"], bw["t4"], bw["a100-80gb"]) == (3350, 4800, 864, 300, 320, 2039)
    source = (REPO / "core" / "gpus.py").read_text()
    assert source.count("# https://") >= len(gpus.CLASSES)  # a vendor page per row


# ---------------------------------------------------------------- serve/parallel.py

def test_tp_problem_follows_vllms_rules():
    assert parallel.tp_problem(VL8, 1, True) is None
    assert parallel.tp_problem(VL8, 2, False) is None and parallel.tp_problem(VL8, 8, True) is None
    assert "32 attention heads do not divide by 3" in parallel.tp_problem(VL8, 3, False)
    assert "group size 128" in parallel.tp_problem(T4B, 8, True)  # 9728 / 8 = 1216: a group straddles two GPUs
    assert parallel.tp_problem(T4B, 8, False) is None and parallel.tp_problem(T4B, 4, True) is None
    assert parallel.tp_problem(T4B, 16, False) is None  # 8 KV heads replicated over 16 GPUs (vLLM allows it)
    assert "KV heads" in parallel.tp_problem({**T4B, "num_attention_heads": 48, "num_key_value_heads": 8}, 12, False)


def test_per_gpu_shares():
    groups = fit.estimate_weights(VL8, "bf16")[0]
    total, kv = sum(groups.values()), fit.kv_bytes_per_token(VL8)
    assert parallel.per_gpu(groups, VL8, 1, 1) == (total, kv)
    w2, kv2 = parallel.per_gpu(groups, VL8, 2, 1)
    assert w2 == -(-total // 2) and kv2 == kv // 2
    w_pp, kv_pp = parallel.per_gpu(groups, VL8, 1, 2)  # the first stage holds the embedding and the vision tower
    assert w_pp == (groups["decoder_linear"] + groups["other"]) / 2 + groups["embedding"] + groups["vision"]
    assert kv_pp == kv // 2
    assert parallel.per_gpu(groups, VL8, 16, 1)[1] == kv // 8  # KV heads replicated past 8 GPUs


def test_fits_one_card_becomes_data_parallel_replicas():
    p = plan("vl-gptq", "4xl40s")
    assert p.status == "fits" and p.parallel.label() == "TP=1 DP=4"
    assert p.command.endswith("--max-model-len 8192 --data-parallel-size 4")
    assert p.vllm_argv[-2:] == ["--data-parallel-size", "4"] and "--tensor-parallel-size" in p.vllm_argv
    assert any("data-parallel replicas behind one endpoint" in w for w in p.parallel.why)


def test_too_big_for_one_card_takes_the_smallest_tp_and_says_why():
    p = plan("vl-fp16", "2xrtx4090")
    assert p.status == "fits" and p.parallel.label() == "TP=2 DP=1"
    assert re.search(r"one card is not enough \(17\.53 GB weights \+ .* > 24 GiB x 0\.90 = 23\.19 GB per GPU\)",
                     p.parallel.why[0])
    assert "--tensor-parallel-size 2" in p.command and p.per_gpu[0] == -(-p.weights.bytes // 2)
    four = plan("vl-fp16", "4xrtx4090")
    assert four.parallel.label() == "TP=2 DP=2" and "--tensor-parallel-size 2 --data-parallel-size 2" in four.command
    three = plan("vl-fp16", "3xrtx4090")  # TP=3 does not divide 32 heads: TP=2, one GPU idle
    assert three.parallel.label() == "TP=2 DP=1" and any("1 GPU(s) left idle" in w for w in three.parallel.why)


def test_nothing_fits_says_by_how_much_and_offers_four_bit(capsys):
    p = plan("vl-fp16", "2xt4")
    assert p.status == "no" and not p.vllm_argv
    assert "does not fit on 2 GPU(s), best layout TP=2 DP=1" in p.parallel.why[0]
    assert "> 15 GiB x 0.90 = 14.50 GB per GPU" in p.parallel.why[0]
    assert fit.main(["--plan", "vl-fp16", "--gpu", "2xt4"]) == 0
    out = capsys.readouterr().out
    assert "  short by " in out and "instead: vl-gptq (gptq) on vllm: fits" in out
    assert "command: python -m serve --model vl-gptq" in out and "vllm argv: python -m vllm" in out


def test_several_machines_pipeline_over_ray(capsys):
    p = plan("vl-fp16", "1xl4", nodes=2)
    assert p.parallel.label() == "TP=1 PP=2 DP=1" and p.status == "fits"
    assert "--pipeline-parallel-size 2 --distributed-executor-backend ray" in p.command
    assert fit.main(["--plan", "vl-fp16", "--gpu", "l4", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "ray start --head --port=6379" in out and "ray start --address=HEAD_IP:6379" in out
    assert "then on the head machine: python -m serve --model vl-fp16" in out
    one = plan("text-gptq", "1xl4", nodes=3)  # fits one card: no Ray, a replica per machine
    assert one.parallel.label() == "TP=1 DP=1" and any("each runs this same command" in w for w in one.parallel.why)
    with pytest.raises(UserError, match="--nodes 0"):
        plan("vl-gptq", "l4", nodes=0)


def test_plan_cli_must_show_outputs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "serve", "--plan", "vl-gptq", "--gpu", "4xl40s"], cwd=REPO,
                       capture_output=True, text=True, env=env(tmp_path), check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "parallel           TP=1 DP=4" in r.stdout and "predicted" in r.stdout
    assert "command: python -m serve --model vl-gptq --max-model-len 8192 --data-parallel-size 4" in r.stdout
    assert re.search(r"vllm argv: python -m vllm\.entrypoints\.openai\.api_server .*--data-parallel-size 4$",
                     r.stdout, re.MULTILINE)
    r = subprocess.run([sys.executable, "-m", "serve", "--plan", "vl-gptq", "--gpu", "4xb200"], cwd=REPO,
                       capture_output=True, text=True, env=env(tmp_path), check=False, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown GPU 'b200'") and r.stderr.count("\n") == 1


def test_serve_dry_run_takes_gpu_classes_and_auto_data_parallel(tmp_path):
    base = [sys.executable, "-m", "serve", "--model", "vl-gptq", "--dry-run"]
    r = subprocess.run(base + ["--gpu", "4xl40s", "--data-parallel-size", "auto"], cwd=REPO, capture_output=True,
                       text=True, env=env(tmp_path), check=False, timeout=300)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("--tensor-parallel-size 1 --data-parallel-size 4"), r.stdout
    r = subprocess.run(base + ["--gpu", "2xl40s", "--data-parallel-size", "4"], cwd=REPO, capture_output=True,
                       text=True, env=env(tmp_path), check=False, timeout=300)
    assert r.returncode == 2 and "needs 4 GPUs, 2 visible" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- serve/args.py: --data-parallel-size

def test_data_parallel_is_checked_against_gpus():
    info = ModelInfo(location="/m", served_name="m", architecture="Qwen3ForCausalLM")
    hw4 = Hardware("x", 16, (), 128.0, 120.0, (Gpu("NVIDIA L40S", 45.0, (8, 9)),) * 4)
    argv, _ = vllm_command(info, hw4, ServeOptions(tensor_parallel_size=2, data_parallel_size=2))
    assert argv[argv.index("--data-parallel-size") + 1] == "2"
    assert "--data-parallel-size" not in vllm_command(info, hw4, ServeOptions())[0]
    with pytest.raises(UserError, match="needs 8 GPUs, 4 visible"):
        vllm_command(info, hw4, ServeOptions(tensor_parallel_size=2, data_parallel_size=4))
    with pytest.raises(UserError, match="need GPUs"):
        vllm_command(info, HOST, ServeOptions(data_parallel_size=2))
    with pytest.raises(UserError, match="at least 1"):
        vllm_command(info, hw4, ServeOptions(data_parallel_size=0))
    argv, _ = vllm_command(info, hw4, ServeOptions(extra_args=("--dtype", "float16")))  # after `--`: replaces serve's
    assert argv.count("--dtype") == 1 and argv[-2:] == ["--dtype", "float16"]


# ---------------------------------------------------------------- bench/predict.py

def test_anchors_reproduce_their_own_measurements():
    a16, a4 = predict.ANCHORS["16-bit"], predict.ANCHORS["w4a16"]
    assert round(a16.efficiency, 3) == 0.496 and round(a4.efficiency, 3) == 0.264
    h100 = gpus.find("h100").gpu
    assert predict.predict(15.1e9, h100, False)["tok_s"] == pytest.approx(110.0)
    assert predict.predict(4.94e9, h100, True)["tok_s"] == pytest.approx(179.0)
    two = predict.predict(15.1e9, h100, False, tp=2)
    assert two["tok_s"] == pytest.approx(220.0) and "all-reduce cost ignored" in two["source"]
    assert predict.predict(1e9, Gpu("Some GPU", 24.0, (8, 9)), False) is None
    assert predict.predict(1e9, gpus.find("l4").gpu, True)["label"] == "predicted"


def test_bytes_per_token_is_roofline_s_rule():
    g = {"decoder_linear": 10, "other": 1, "lm_head": 0, "embedding": 5, "vision": 7}
    assert roofline.per_token_bytes(g, tied=True) == 16 and roofline.per_token_bytes(g, tied=False) == 11
    vl = fit.estimate_weights(VL8, "bf16")[0]
    assert round(predict.bytes_per_token(vl, VL8) / 1e9, 1) == 15.1  # the notes' 15.1 GB per token
    t = fit.estimate_weights(T4B, "bf16")[0]
    assert predict.bytes_per_token(t, T4B) == t["decoder_linear"] + t["other"] + t["embedding"]  # tied head


def test_plan_prints_predicted_speed_of_the_family():
    p = plan("vl-fp16", "2xrtx4090")
    assert p.speeds[0].startswith("per replica, at TP=2 DP=1:") and "all-reduce cost ignored" in p.speeds[0]
    assert any(s.startswith("vl-fp16 (bf16): 7.57 GB/token/GPU") for s in p.speeds)
    assert any(s.startswith("vl-gptq (gptq):") for s in p.speeds) and any("vl-awq (awq)" in s for s in p.speeds)
    unknown = fit.gpu_plan(fit.subject("vl-gptq"), HOST, [Gpu("Some GPU", 24.0, (8, 9))])
    assert unknown.speeds[0].startswith("no bandwidth known for 'Some GPU'")


def test_bench_predict_writes_a_report_without_a_server(tmp_path):
    out = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "bench", "--predict", "--gpu", "l40s", "--models", "vl-fp16,vl-gptq",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, env=env(tmp_path), check=False,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "predicted bs1 tok/s" in r.stdout and f"report: {out}/report.md" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["kind"] == "predict" and {v["status"] for v in rep["variants"]} == {"predicted"}
    rows = {x["alias"]: x for x in rep["derived"]["rows"]}
    assert rows["vl-gptq"]["predicted_tok_s"] == pytest.approx(rep["variants"][1]["predicted"]["tok_s"])
    assert rows["vl-gptq"]["predicted_x_base"] > 1.5 and rows["vl-fp16"]["predicted_x_base"] == 1.0
    md = (out / "report.md").read_text()
    assert "## Predicted decode (batch 1, one replica)" in md and "no server was started" in md
    assert "## Memory" not in md and (out / "decode.png").stat().st_size > 1000
    for bad, needle in ((["--models", "vl-gptq"], "--predict needs --gpu"),
                        (["--gpu", "some-gpu", "--models", "vl-gptq"], "unknown GPU 'some-gpu'")):
        r = subprocess.run([sys.executable, "-m", "bench", "--predict", *bad, "--out", str(tmp_path / "x")],
                           cwd=REPO, capture_output=True, text=True, env=env(tmp_path), check=False, timeout=300)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_a_measured_report_shows_predicted_next_to_measured():
    from tests.unit.test_bench_report import REPORT

    rep = json.loads(json.dumps(REPORT))
    rep["variants"][1]["predicted"] = {"tok_s": 25.0, "label": "predicted"}
    d = derive(rep)
    row = {r["alias"]: r for r in d["rows"]}["m-gptq"]
    assert row["predicted_tok_s"] == 25.0 and row["decode_tok_s_bs1"] == pytest.approx(20.0)
    head = headline_table(rep, d)
    assert "predicted bs1 tok/s" in head[0] and "| 20.0 | 25.0 |" in head[3]
    assert "predicted" not in headline_table(REPORT)[0]  # reports without predictions keep their layout


# ---------------------------------------------------------------- the README table

def test_readme_gpu_table_is_what_its_command_prints():
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- gpu-table: (.+?) -->\n(.*?)\n<!-- /gpu-table -->", text, re.DOTALL)
    assert m, "README: the 'Which GPU, how many' table markers are missing"
    assert m.group(1) == "python -m bench --predict --table"
    assert m.group(2).splitlines() == predict_report.table(), (
        "README's GPU table is stale: paste the output of `python -m bench --predict --table` between its markers")
    assert "## Which GPU, how many" in text and text.index("## Scale-out") < text.index("## Which GPU, how many")


def test_gpu_table_command_prints_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--predict", "--table"], cwd=REPO, capture_output=True,
                       text=True, env=env(tmp_path), check=False, timeout=300)
    assert r.returncode == 0 and r.stdout.splitlines() == predict_report.table(), r.stderr
    rows = r.stdout.splitlines()[2:]
    assert len(rows) == 2 * len(gpus.CLASSES)
    h100_vl = next(line for line in rows if line.startswith("| H100") and "Qwen3-VL-8B" in line)
    assert "| Machete (bfloat16) | 110 |" in h100_vl  # the anchor: 110 tok/s bf16 at the 8B shape on an H100
