"""tests/train: the shared fixtures (train_data: tokenizer + two shard folders) are in tests/conftest.py."""

from __future__ import annotations

import torch

# These models are tiny: one thread is faster, and on a shared 2-core machine two OpenMP threads can
# spin against other processes' threads (measured 100x slower). Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)
