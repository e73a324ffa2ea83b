# Every target sets itself up from a fresh clone: it creates .venv and installs into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch: the CPU wheel by default (CI, laptops). With a GPU, install PyTorch into .venv
# your usual way first; an importable torch is kept as it is.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-dev
NB_TIMEOUT ?= 300

# the MNIST IDX files for bench/mnist_cpu.py in `make bench` (skipped if absent)
MNIST ?= ../shared/data/mnist

.PHONY: lessons test lab bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

## make lessons: execute every lesson and demo; executed notebooks + HTML go to build/
lessons: $(STAMP)
	$(PY) tools/run_notebooks.py lessons toy --out build --timeout $(NB_TIMEOUT)

# Chromium for the browser test, from the system's packages: installed when we can (root on Debian/Ubuntu),
# otherwise tests/test_browser.py skips and says how to enable it. Never a browser download.
CHROMIUM_STAMP := $(VENV)/.chromium-checked
$(CHROMIUM_STAMP): $(STAMP)
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (system package) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium and not root on Debian/Ubuntu: the browser test will skip (apt-get install chromium)"; fi
	touch $@

## make test: unit and statistical tests, every notebook under nbval, the demos in a real browser
test: $(STAMP) $(CHROMIUM_STAMP)
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NB_TIMEOUT) --timeout=900 -p no:cacheprovider --durations=15

## make lab: JupyterLab on the lessons
lab: $(STAMP)
	$(PY) -m jupyter lab --notebook-dir=. --ServerApp.default_url=/lab/tree/lessons

## make bench: benchmarks that print ratios measured side by side
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/threads.py
	$(PY) bench/two_kernels.py --repeats 5 --settings default "scorelab (auto)" threads=1 GOMP_SPINCOUNT=0
	$(PY) bench/sampling.py
	$(PY) bench/sampling.py --particles 100000 --steps 10 --parts a
	$(PY) bench/sampling.py --parts c
	$(PY) bench/likelihood.py
	$(PY) bench/widgets.py
	$(PY) bench/images.py
	@if [ -d "$(MNIST)" ]; then $(PY) bench/mnist_cpu.py --data "$(MNIST)" --out runs/bench-mnist-cpu; \
	else echo "bench/mnist_cpu.py skipped: no MNIST folder at MNIST=$(MNIST)"; fi

lint: $(STAMP)
	$(PY) -m ruff check scorelab tests bench tools
	$(PY) -m ruff format --check scorelab tests bench tools

clean:
	rm -rf build $(VENV)
