# Everything sets itself up: `make test` and `make demo` work on a fresh Debian machine with Python 3.11.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= runs/demo

.PHONY: install test test-fast demo demo-quick study study-quick continual alpha bench clean espeak

install: $(STAMP)

# Order matters: the pinned CPU torch goes in first so that no later requirement pulls a CUDA build.
$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory espeak
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

# espeak-ng synthesizes the built-in benchmark. Installed with apt when missing and we are root (or have sudo).
espeak:
	@if command -v espeak-ng >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; \
	else echo "espeak-ng is missing and cannot be installed without root: run 'sudo apt-get install espeak-ng' (the lite-* tasks need it)." >&2; exit 1; fi

test: install
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

demo: install
	$(VENV)/bin/speechft reproduce --out $(DEMO_OUT)

demo-quick: install
	$(VENV)/bin/speechft reproduce --quick --out $(DEMO_OUT)-quick

STUDY_OUT ?= runs/study

study: install
	$(VENV)/bin/speechft study --config configs/study.yaml --out $(STUDY_OUT)

study-quick: install
	$(VENV)/bin/speechft study --quick --config configs/study.yaml --out $(STUDY_OUT)-quick

CONTINUAL_OUT ?= runs/continual

continual: install
	$(VENV)/bin/speechft study --config configs/continual.yaml --out $(CONTINUAL_OUT)

ALPHA_OUT ?= runs/alpha

alpha: install
	$(VENV)/bin/speechft study --config configs/alpha.yaml --out $(ALPHA_OUT)

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
