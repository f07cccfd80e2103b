# The README's two commands: `make demo` (the main job) and `make test`. Each sets up .venv/ on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo demo-seg

setup: $(VENV)/.complete

# Re-run the (idempotent) set-up whenever what it installs changes.
$(VENV)/.complete: requirements.txt setup.py tools/setup_env.sh
	bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests -q
