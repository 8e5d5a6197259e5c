"""Weighted sampling of fixed-length windows from several token shard folders.

Stateless by design: the samples of global step s are a pure function of (seed, phase, s), so the data
position saved in a checkpoint is just the step, resume is exact, and every DDP rank can cut its own
slice of the same global batch without talking to the others. Each sample picks a dataset by weight,
then a uniformly random window of seq_len + 1 tokens in its train split (nanoGPT-style).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import DataError
from ..data.shards import TokenShards
from .config import Dataset


class TrainDataError(ValueError):
    """Bad training data: one line naming the dataset, split and value."""


def open_shards(ds: Dataset, split: str, seq_len: int, vocab_size: int) -> TokenShards | None:
    """Open one split, checking it against the model; None for an empty/too small val split."""
    try:
        shards = TokenShards(ds.path, split)
    except DataError as e:
        raise TrainDataError(f"dataset {ds.label()}: {e}") from None
    v = shards.index.get("vocab_size")
    if v is not None and v > vocab_size:
        raise TrainDataError(
            f"{ds.path}/index.json: vocab_size {v} > model vocab_size {vocab_size} "
            "(shards were tokenized with a different tokenizer)"
        )
    if len(shards) < seq_len + 1:
        if split == "val":
            return None
        raise TrainDataError(f"{ds.path}: {split} split has {len(shards)} tokens, need >= {seq_len + 1}")
    return shards


def check_ids(x: torch.Tensor, vocab_size: int, where: str) -> None:
    hi = int(x.max())
    if hi >= vocab_size:
        raise TrainDataError(f"{where}: token id {hi} >= model vocab_size {vocab_size}")


class Mixture:
    def __init__(self, datasets: list[Dataset], seq_len: int, vocab_size: int, seed: int, phase: int):
        self.datasets = datasets
        self.shards = [open_shards(d, "train", seq_len, vocab_size) for d in datasets]
        w = np.array([d.weight for d in datasets], dtype=np.float64)
        self.p = w / w.sum()
        self.seq_len, self.vocab_size, self.seed, self.phase = seq_len, vocab_size, seed, phase

    def plan(self, step: int, n: int) -> list[tuple[int, int]]:
        """(dataset index, start offset) of the n samples of global step `step`."""
        rng = np.random.default_rng([self.seed, self.phase, step])
        which = rng.choice(len(self.p), size=n, p=self.p)
        out = []
        for k in which:
            hi = len(self.shards[k]) - self.seq_len - 1
            out.append((int(k), int(rng.integers(0, hi + 1))))
        return out

    def batch(self, step: int, n_global: int, lo: int, hi: int) -> torch.Tensor:
        """Samples lo..hi of the global batch as a (hi-lo, seq_len+1) int64 tensor."""
        plan = self.plan(step, n_global)[lo:hi]
        rows = [self.shards[k].read(s, self.seq_len + 1).astype(np.int64) for k, s in plan]
        x = torch.from_numpy(np.stack(rows))
        bad = (x.max(1).values >= self.vocab_size).nonzero()
        if len(bad):
            k, s = plan[int(bad[0])]
            check_ids(
                x[int(bad[0])],
                self.vocab_size,
                f"{self.datasets[k].path} train tokens {s}..{s + self.seq_len}",
            )
        return x


def val_batches(ds: Dataset, seq_len: int, vocab_size: int, tokens: int, batch: int) -> list[torch.Tensor]:
    """Fixed windows evenly spread over the val split (same every eval): list of (b, seq_len+1)."""
    shards = open_shards(ds, "val", seq_len, vocab_size)
    if shards is None:
        return []
    n = max(1, min(tokens // seq_len, (len(shards) - 1) // seq_len))
    span = len(shards) - seq_len - 1
    starts = [i * span // max(n - 1, 1) for i in range(n)] if n > 1 else [0]
    rows = np.stack([shards.read(s, seq_len + 1).astype(np.int64) for s in starts])
    x = torch.from_numpy(rows)
    check_ids(x, vocab_size, f"dataset {ds.label()} val split")
    return list(x.split(batch))
