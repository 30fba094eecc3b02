# The two commands of the README. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: train test setup bench clean

$(STAMP): setup.cfg pyproject.toml
	# The code evaluation's sandbox (evaluation/sandbox.py) uses bubblewrap; as root on Debian,
	# install it when missing. Elsewhere it falls back to unshare (root) or says what to install.
	if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
	  || echo "bubblewrap could not be installed: the code evaluation will sandbox with unshare"; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: on CPU machines 2.13.0 is a local CPU wheel; never a CUDA download.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# The DeepSpeed engine's tests run on CPU too. No build isolation: pip's isolated build
	# environment would fetch a torch of its own (a CUDA build); this keeps the pinned one.
	$(PY) -m pip install -q --no-build-isolation deepspeed==0.19.8 torch==2.13.0
	touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PY) -m pretrain.train $(ARGS)

# Two pytest workers, whole files each (module fixtures and the SLURM test cluster stay in one
# process): most tests wait on a single-threaded subprocess's start-up, so two overlap on 2 cores.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) outputs multirun .cache
