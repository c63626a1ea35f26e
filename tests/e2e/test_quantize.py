"""`python -m quantize` end to end: real AutoRound on the tiny models, real reloads, the real CLI.

The tiny-vl / tiny-text artifacts come from the session fixture `artifact` (tests/e2e/conftest.py), which runs
`python -m quantize --model <base> --formats autoround,gptq,awq --recipe light` once when they are missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import catalog
from core.errors import run_cli
from quantize import card, lint
from quantize.__main__ import main

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FORMATS = ("autoround", "gptq", "awq")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _check_artifact(folder: Path, fmt: str, modality: str) -> dict:
    arch = catalog.VL_ARCH if modality == "vl" else catalog.TEXT_ARCH
    report = json.loads((folder / "quantization_report.json").read_text())
    problems = lint.lint_folder(folder, fmt, modality, arch, expected_4bit=report["layout"]["linears_4bit"],
                                require_card=True)
    assert lint.errors(problems) == [], problems
    cfg = json.loads((folder / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == catalog.FORMATS[fmt].quant_method
    assert qc["bits"] == 4 and qc["group_size"] == 128
    assert qc.get("sym", True) is True and qc.get("zero_point", False) is False
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "README.md"} <= files
    if modality == "vl":
        assert {"preprocessor_config.json", "processor_config.json"} <= files
    # the card carries the verify numbers of the JSON report
    text = (folder / "README.md").read_text()
    fm = card.front_matter(text)
    assert fm["base_model"] == report["base"]["id"] and fm["quantization"]["format"] == fmt
    assert fm["quantization"]["calibration_sha256"] == report["calibration"]["sha256"]
    ver = report["verify"]
    assert ver["ok"] and set(ver["results"]) == {"rtn", *FORMATS}
    for r in ver["results"].values():
        assert r["error"] is None and r["kl_mean"] >= 0 and 0 <= r["top1"] <= 1
        assert f"{r['kl_mean']:.5f}" in text
    assert f"python -m serve --model {folder.name}" in text
    return report


@pytest.mark.parametrize("base", ["tiny-vl", "tiny-text"])
def test_light_makes_three_complete_linted_verified_formats(artifact, base):
    modality = catalog.variant(base).modality
    reports = {}
    for fmt in FORMATS:
        alias = catalog.quantized_alias(base, fmt)
        folder = artifact(alias)
        assert folder.name == alias and folder.parent == catalog.artifact_root()
        reports[fmt] = _check_artifact(folder, fmt, modality)
    # one tuning, three exports: same calibration, same verify run; the formats agree with each other
    assert len({r["calibration"]["sha256"] for r in reports.values()}) == 1
    ver = reports["gptq"]["verify"]
    assert all(v < 0.05 for v in ver["cross_format_kl"].values())
    if modality == "vl":
        assert ver["with_image"]
        # the vision tower, mergers, embeddings and lm_head stayed 16-bit
        q = reports["awq"]["layout"]["linears_4bit"]
        assert q and all(n.startswith("model.language_model.layers.") for n in q)
    else:
        # tiny-text is trained: AutoRound's tuning must beat plain round-to-nearest on held-out prompts
        r = ver["results"]
        print(f"\ntiny-text KL vs bf16: tuned {r['autoround']['kl_mean']:.5f}, RTN {r['rtn']['kl_mean']:.5f}")
        assert r["autoround"]["kl_mean"] < r["rtn"]["kl_mean"]
    assert not list(catalog.artifact_root().glob(f".quantize-*-{os.getpid()}-*"))
    assert not (REPO / "ar_work_space").exists()


def test_rtn_with_a_local_dataset_to_compressed_tensors(tmp_path):
    """The rtn recipe, a user's .jsonl calibration file (its hash in the card) and the fourth format."""
    from core import tiny
    from quantize.api import quantize, read_report

    docs = tiny.corpus(max_chars=200_000)
    data = tmp_path / "calib.jsonl"
    data.write_text("\n".join(json.dumps({"text": d}) for d in docs[:400]) + "\n")
    out = quantize("tiny-text", ["compressed-tensors"], "rtn", dataset=str(data), output=str(tmp_path / "out"))
    folder = out["compressed-tensors"]
    assert folder == tmp_path / "out" / "tiny-text-ct"
    rep = _check_artifact_ct(folder)
    assert rep["calibration"]["source"] == str(data.resolve()) and len(rep["calibration"]["sha256"]) == 64
    assert rep["recipe"]["iters"] == 0
    r = rep["verify"]["results"]
    # plain RTN exported and RTN computed here are the same rounding
    assert abs(r["compressed-tensors"]["kl_mean"] - r["rtn"]["kl_mean"]) < 1e-4
    assert read_report(folder)["format"] == "compressed-tensors"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-text-ct"]


def test_verify_served_puts_the_served_numbers_in_the_card(tmp_path):
    """--verify-served serves the base and the export as `serve` would here (two vLLM start-ups) and scores them
    through the endpoint: the export's served KL is small but not zero (4-bit rounding), the same order as
    transformers' verify of the same artifact, and the card shows the row."""
    r = subprocess.run([sys.executable, "-m", "quantize", "--model", "tiny-text", "--formats", "gptq", "--recipe", "rtn",
                        "--verify-served", "--output", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=1200, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "tiny-text-gptq"
    rep = json.loads((folder / "quantization_report.json").read_text())
    served = rep["served"]
    assert "error" not in served and served["base"]["server"].startswith("vLLM"), served
    self_all = served["base"]["self"]["all"]
    assert self_all["kl_mean"] < 1e-3 and self_all["top1"] == 1.0, self_all
    got = served["results"]["gptq"]
    text = got["summary"]["text"]
    assert got["server"].startswith("vLLM") and text["positions"] >= 48, got
    assert 1e-6 < text["kl_mean"] < 0.05 and text["top1"] > 0.8, text
    tf = rep["verify"]["results"]["gptq"]["kl_mean"]
    assert text["kl_mean"] < 10 * tf + 1e-3, (text, tf)  # a served path that lost the checkpoint would be far off
    card_text = (folder / "README.md").read_text()
    assert "## Served quality (`--verify-served`)" in card_text
    assert f"| gptq (this artifact) | {got['server']} | text | {text['positions']} | {text['kl_mean']:.5f} |" in card_text


def test_one_autoround_run_per_format_gives_the_same_exports(tmp_path, monkeypatch):
    """Where several formats would not fit in RAM together (the 8B VL shape on 24 GB), each is its own AutoRound run:
    forced here on the tiny model, the formats must still agree (verify's cross-format check) and equal RTN."""
    from quantize.api import quantize, read_report

    monkeypatch.setenv("QWEN_W4_RUNS_PER_FORMAT", "1")
    out = quantize("tiny-text", ["gptq", "awq"], "rtn", output=str(tmp_path / "out"))
    assert sorted(out) == ["awq", "gptq"]
    rep = read_report(out["gptq"])
    assert rep["timings"]["runs"] == 2
    assert rep["verify"]["ok"] and rep["verify"]["cross_format_kl"]["gptq~awq"] < 1e-3
    r = rep["verify"]["results"]
    assert abs(r["gptq"]["kl_mean"] - r["rtn"]["kl_mean"]) < 1e-3 and abs(r["awq"]["kl_mean"] - r["rtn"]["kl_mean"]) < 1e-3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-text-awq", "tiny-text-gptq"]


def _check_artifact_ct(folder: Path) -> dict:
    report = json.loads((folder / "quantization_report.json").read_text())
    problems = lint.lint_folder(folder, "compressed-tensors", "text", catalog.TEXT_ARCH,
                                expected_4bit=report["layout"]["linears_4bit"], require_card=True)
    assert lint.errors(problems) == [], problems
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and "lm_head" in qc["ignore"]
    assert report["calibration"]["sha256"] in (folder / "README.md").read_text()
    return report


def test_export_reloads_in_transformers_on_its_own(artifact, tmp_path):
    """A copied folder (nothing else around it) loads with plain transformers + AutoRoundConfig and generates."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoRoundConfig, AutoTokenizer

    src = artifact("tiny-text-gptq")
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16,
                                                 quantization_config=AutoRoundConfig(backend="auto"))
    ids = tok.apply_chat_template([{"role": "user", "content": "Explain: what a list is."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8 or tok.eos_token_id in out[0].tolist()


def test_ctrl_c_mid_tuning_leaves_previous_artifact_and_no_temp(artifact, tmp_path):
    import shutil
    import threading

    prev = artifact("tiny-vl-gptq")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(prev, out / "tiny-vl-gptq")
    before = _tree_digest(out / "tiny-vl-gptq")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "quantize", "--model", "tiny-vl", "--formats", "gptq", "--recipe", "light",
           "--iters", "1000", "--output", str(out), "--overwrite"]
    env = {**ENV, "PYTHONPATH": str(REPO)}
    # a terminal's Ctrl-C: SIGINT must not reach the child ignored even where this run inherited it so (a shell
    # script's background job), else Python never installs its KeyboardInterrupt handler. A handler set here is
    # reset to the default by exec; an ignored disposition would be inherited.
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, prev)
    buf = bytearray()
    reader = threading.Thread(target=lambda: [buf.extend(c) for c in iter(lambda: p.stdout.read1(4096), b"")],
                              daemon=True)
    reader.start()
    try:
        t0 = time.time()
        # AutoRound's progress bar names the block it is tuning (tqdm redraws with \r, so read raw bytes)
        while b"Quantizing model.language_model.layers.0" not in buf:
            assert p.poll() is None and time.time() - t0 < 240, buf.decode(errors="replace")
            time.sleep(0.2)
        time.sleep(1)
        assert p.poll() is None, buf.decode(errors="replace")
        assert list(out.glob(".quantize-*")), "a temp folder exists while the run is in flight"
        p.send_signal(signal.SIGINT)
        p.wait(timeout=300)  # a loaded 2-core machine can be slow to unwind torch.compile
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(timeout=10)
    text = buf.decode(errors="replace")
    assert p.returncode == 130, text[-3000:]
    assert "interrupted" in text[-500:] and "Traceback" not in text, text[-3000:]
    assert _tree_digest(out / "tiny-vl-gptq") == before
    assert sorted(x.name for x in out.iterdir()) == ["tiny-vl-gptq"]  # no temp folder left
    assert list(cwd.iterdir()) == []  # AutoRound's work space did not land in the cwd


def _run_inproc(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err[-1] if err else ""


def _bad_model(tmp_path: Path, kind: str) -> str:
    base = catalog.resolve("tiny-text").path
    d = tmp_path / kind
    if kind == "not-a-model":
        d.mkdir()
        (d / "notes.txt").write_text("hello")
        return str(d)
    import shutil

    shutil.copytree(base, d)
    if kind == "llama":
        cfg = json.loads((d / "config.json").read_text())
        cfg["architectures"] = ["LlamaForCausalLM"]
        (d / "config.json").write_text(json.dumps(cfg))
    elif kind == "corrupt-config":
        (d / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], ')
    elif kind == "plain-copy":  # a real-model-like folder: no tiny marker, so AutoRound's default dataset
        (d / "tiny_model.json").unlink()
    elif kind == "corrupt-weights":
        w = d / "model.safetensors"
        w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    return str(d)


@pytest.mark.parametrize("case,argv,expect", [
    ("unknown alias", ["--model", "tiny-nope"], "unknown model alias 'tiny-nope'"),
    ("quantized alias", ["--model", "tiny-vl-gptq"], "already a quantized variant"),
    ("not a model", ["--model", "@not-a-model"], "not a model folder"),
    ("unsupported architecture", ["--model", "@llama"], "unsupported architecture LlamaForCausalLM"),
    ("corrupt config", ["--model", "@corrupt-config"], "is not valid JSON"),
    ("corrupt safetensors", ["--model", "@corrupt-weights"], "cannot read weights model.safetensors"),
    ("missing dataset", ["--model", "tiny-text", "--dataset", "/nonexistent/calib.jsonl"],
     "calibration dataset not found"),
    ("unreadable dataset", ["--model", "tiny-text", "--dataset", "@badjson", "--output", "@empty"],
     "is not valid JSON (line 2)"),
    ("asymmetric", ["--model", "tiny-text", "--asym"], "asymmetric quantization is not supported"),
    ("unknown format", ["--model", "tiny-text", "--formats", "gptq,exl2"], "unknown format 'exl2'"),
    ("output exists", ["--model", "tiny-vl", "--formats", "gptq"], "output exists"),
    ("push offline", ["--model", "tiny-text", "--push-to-hub", "me/tiny", "--output", "@empty"],
     "--push-to-hub needs the network but HF_HUB_OFFLINE is set"),
    ("hub model offline", ["--model", "vl-fp16", "--recipe", "rtn"], "cannot download Qwen/Qwen3-VL-8B-Instruct"),
    ("hub id offline", ["--model", "Qwen/Qwen3-0.6B"], "cannot read the config of Hub model Qwen/Qwen3-0.6B"),
    ("offline, no dataset", ["--model", "@plain-copy", "--output", "@empty"], "no --dataset given"),
    ("no cuda", ["--model", "tiny-text", "--device", "cuda", "--output", "@empty"], "no CUDA GPU"),
])
def test_bad_input_is_one_line_and_nonzero(artifact, tmp_path, capsys, monkeypatch, case, argv, expect):
    if case == "output exists":
        artifact("tiny-vl-gptq")
    if case == "no cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "calib.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    special = {"@empty": str(tmp_path / "empty"), "@badjson": str(tmp_path / "calib.jsonl")}
    argv = [special.get(a) or (_bad_model(tmp_path, a[1:]) if a.startswith("@") else a) for a in argv]
    before = set(catalog.artifact_root().iterdir())
    code, line = _run_inproc(argv, capsys)
    assert code != 0
    assert line.startswith("error: ") and expect in line, line
    assert set(catalog.artifact_root().iterdir()) == before  # nothing written, nothing half-written


def test_bad_input_through_the_real_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "quantize", "--model", "tiny-text", "--recipe", "light",
                        "--formats", "awq", "--dataset", str(tmp_path / "missing.txt")],
                       check=False, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: calibration dataset not found"), r.stderr
