# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
SEMCLIP_HOME ?= $(CURDIR)/.semclip
export SEMCLIP_HOME

STAMP := $(VENV)/.installed

.PHONY: install demo backbone bench-shards test lint format clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m flows

# Offline SEM backbone from scratch (synthetic archive; < 45 min on 2 cores; rerun resumes).
# Passive OpenMP waits: on a shared machine spinning threads made each step 2x slower.
backbone: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/semclip pretrain

# Nightly shards on Dask: 2,000 tiny-config images, 1 worker against 2 (img/s and the ratio).
bench-shards: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_shards.py --images 2000 --workers 1,2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(SEMCLIP_HOME) .pytest_cache .ruff_cache
