"""Checkpoints: HF layout (config.json, model.safetensors, tokenizer.json) + `trainer_state.pt` beside it.

`run/ckpt/step_000120/` is written as `.step_000120.<pid>.<random>.tmp/` and renamed when complete
(phiforge.io.atomic_path), so a kill at any moment leaves either the old set of checkpoints or the new
one, never a half-written directory. The trainer state holds everything exact resume needs: optimizer,
step, phase, RNG states, the recipe.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..model import save_model

STATE = "trainer_state.pt"
_STEP = re.compile(r"step_(\d+)$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints (renamed into place, with a trainer state), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.match(p.name) and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name)[1]))


def latest(root: str | Path) -> Path | None:
    ck = list_checkpoints(root)
    return ck[-1] if ck else None


def rng_state() -> dict:
    # only tensors, numbers, strings and tuples: trainer_state.pt loads with weights_only=True (no pickle code)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(s["python"])


def save(root: str | Path, step: int, model, tokenizer, state: dict, keep_last: int) -> Path:
    """Write step_<step>/ atomically (model = a plain, unwrapped Transformer), then prune to keep_last."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    for stale in root.glob(f".{final.name}.*.tmp"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    # re-saving the same step (e.g. a signal right after a periodic save) replaces it
    with atomic_path(final) as tmp:
        save_model(model, tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        torch.save(state, tmp / STATE)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(ckpt: str | Path) -> dict:
    return torch.load(Path(ckpt) / STATE, map_location="cpu", weights_only=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
