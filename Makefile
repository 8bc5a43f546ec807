# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv if missing,
# installs the pinned stack (torch==2.13.0 first and alone: an unpinned torch pulls a multi-GB CUDA build),
# then runs. Installing is skipped when nothing it reads has changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aa-installed
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: install demo test bench clean

$(STAMP): setup.py requirements.txt requirements-real.txt requirements-dev.txt requirements-studio.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt \
		-r requirements-studio.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-real.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, diffusers, peft, onnx, mediapipe; assert torch.__version__.startswith('2.13.0')"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python examples/demo.py --out out

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/render_speed.py

clean:
	rm -rf out build .pytest_cache
