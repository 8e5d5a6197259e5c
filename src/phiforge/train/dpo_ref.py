"""DPO's reference log-probabilities: one pass of the initial model over the pairs, stored beside the data.

The file `<data>.ref-<model fingerprint>.jsonl` holds one {"key", "chosen", "rejected"} row per pair,
keyed by the pair's token ids (dpo.Pairs.key); the fingerprint hashes the model's weights and the compute
dtype. A re-run (or a resume, whose model is a later checkpoint) reads it back and computes only pairs it
lacks, so the reference model is never in memory while training. Floats are written with Python's repr,
which reads back bit for bit.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path

import torch

from ..io import JsonlError, read_jsonl, write_jsonl
from .dist import Dist, barrier
from .dpo import Pairs, collate, sequence_logps
from .mixture import TrainDataError


def model_fingerprint(model: torch.nn.Module, dtype: str = "fp32") -> str:
    h = hashlib.sha256(dtype.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(data: str | Path, fingerprint: str) -> Path:
    data = Path(data)
    return data.with_name(f"{data.name}.ref-{fingerprint}.jsonl")


def read_cache(path: Path) -> dict[str, tuple[float, float]]:
    if not path.is_file():
        return {}
    out = {}
    try:
        for n, row in read_jsonl(path, numbered=True):
            try:
                out[row["key"]] = (float(row["chosen"]), float(row["rejected"]))
            except (KeyError, TypeError, ValueError):
                raise TrainDataError(
                    f"{path}:{n}: bad reference row (delete the file to recompute)"
                ) from None
    except JsonlError as e:
        raise TrainDataError(f"{e} (delete the file to recompute)") from None
    return out


@torch.no_grad()
def compute(model, pairs: Pairs, idx: list[int], micro_batch: int, pad_id: int, device, autocast=None):
    """{key: (chosen logp, rejected logp)} for the given pairs, in eval mode (no dropout)."""
    was = model.training
    model.eval()
    out = {}
    try:
        for s in range(0, len(idx), micro_batch):
            rows = idx[s : s + micro_batch]
            b = collate(pairs, rows, pad_id)
            with autocast or nullcontext():
                lp = sequence_logps(model, b.x.to(device), b.y.to(device)).double().cpu()
            for j, i in enumerate(rows):
                out[pairs.key(i)] = (float(lp[j]), float(lp[len(rows) + j]))
    finally:
        model.train(was)
    return out


def attach(
    pairs: Pairs, data: str | Path, model, micro_batch: int, pad_id: int, d: Dist, dtype: str = "fp32"
) -> tuple[Path, int]:
    """Set pairs.ref_chosen / ref_rejected from the cache beside `data`, computing what it lacks (rank 0;
    the others wait and read). Returns the cache file and the number of pairs computed now."""
    path = cache_path(data, model_fingerprint(model, dtype))
    keys = [pairs.key(i) for i in range(len(pairs))]
    cached = read_cache(path)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    if missing and d.main:
        model.to(d.device)
        autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if dtype == "bf16" else None
        cached.update(compute(model, pairs, missing, micro_batch, pad_id, d.device, autocast))
        try:
            write_jsonl(path, ({"key": k, "chosen": c, "rejected": r} for k, (c, r) in cached.items()))
        except OSError as e:
            raise TrainDataError(f"{path}: cannot store reference log-probs beside the data ({e})") from None
    if missing:
        barrier(d)
        cached = read_cache(path)
    pairs.ref_chosen = torch.tensor([cached[k][0] for k in keys], dtype=torch.float64)
    pairs.ref_rejected = torch.tensor([cached[k][1] for k in keys], dtype=torch.float64)
    return path, len(missing)
