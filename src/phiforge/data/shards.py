"""Token shards: flat little-endian uint16/uint32 arrays, documents separated by EOS, plus index.json.

Each datatrove task writes its own `{split}_{rank:05d}.bin` (temp file + rename, so a killed task leaves
nothing half-written) and a small JSON beside it; `finalize_index` merges those into `index.json`, the one
file a trainer reads. The train/val split is a hash of the document id, so it does not depend on the
number of tasks, the file order or what else is in the corpus. Read with `TokenShards` (numpy.memmap).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from ..io import atomic_path, write_json
from . import DataError

SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def split_of(doc_id: str, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return "val" if h / 2**64 < val_fraction else "train"


class TokenizeStep(PipelineStep):
    """datatrove step: documents -> token shards. Yields nothing (it is the last step)."""

    name = "🔢 tokenize to shards"
    type = "🔢 - TOKENIZER"

    def __init__(
        self, tokenizer_dir: str, output_dir: str, val_fraction: float = 0.01, batch_size: int = 1024
    ):
        super().__init__()
        self.tokenizer_dir, self.output_dir = str(tokenizer_dir), str(output_dir)
        self.val_fraction, self.batch_size = val_fraction, batch_size

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from ..tokenizer import Tokenizer

        tok = Tokenizer.from_file(self.tokenizer_dir)
        eos, dtype = tok.eos_id, token_dtype(tok.vocab_size)
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict = {}
        counts = {s: {"tokens": 0, "docs": 0} for s in SPLITS}
        batch: list = []

        def flush():
            with self.track_time(unit="batch"):
                encoded = tok.tok.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
                for doc, enc in zip(batch, encoded, strict=True):
                    s = split_of(doc.id, self.val_fraction)
                    ids = np.asarray(enc.ids + [eos], dtype=dtype)
                    files[s].write(ids.tobytes())
                    counts[s]["tokens"] += len(ids)
                    counts[s]["docs"] += 1
                    self.stat_update(f"{s}_tokens", value=len(ids))
                    self.stat_update(f"{s}_docs")
            batch.clear()

        with ExitStack() as stack:  # each split's file is renamed into place only when the task finishes
            for s in SPLITS:
                files[s] = stack.enter_context(
                    open(stack.enter_context(atomic_path(out / f"{s}_{rank:05d}.bin")), "wb")
                )
            for doc in data or ():
                batch.append(doc)
                if len(batch) >= self.batch_size:
                    flush()
            if batch:
                flush()
        meta = {"dtype": dtype.str, "eos_id": eos, "vocab_size": tok.vocab_size, "splits": counts}
        write_json(out / f"part_{rank:05d}.json", meta, indent=1)
        return
        yield  # a generator, as datatrove expects of a step


def finalize_index(shard_dir: str | Path, tokenizer_dir: str | Path | None = None) -> dict:
    """Merge per-task part files into index.json (atomic). Returns the index."""
    shard_dir = Path(shard_dir)
    parts = sorted(shard_dir.glob("part_*.json"))
    if not parts:
        raise DataError(f"{shard_dir}: no part_*.json files: the tokenize stage did not run")
    metas = [json.loads(p.read_text()) for p in parts]
    first = metas[0]
    if any(m["dtype"] != first["dtype"] or m["eos_id"] != first["eos_id"] for m in metas):
        raise DataError(f"{shard_dir}: part files disagree on dtype/eos_id (mixed tokenizers?)")
    index = {
        "format": "phiforge-token-shards-v1",
        "dtype": first["dtype"],
        "eos_id": first["eos_id"],
        "vocab_size": first["vocab_size"],
        "tokenizer": str(tokenizer_dir) if tokenizer_dir else None,
        "splits": {},
    }
    for s in SPLITS:
        files = []
        for p, m in zip(parts, metas, strict=True):
            rank = p.stem.split("_")[1]
            if m["splits"][s]["tokens"]:
                files.append({"path": f"{s}_{rank}.bin", **m["splits"][s]})
        index["splits"][s] = {
            "files": files,
            "tokens": sum(f["tokens"] for f in files),
            "docs": sum(f["docs"] for f in files),
        }
    write_json(shard_dir / "index.json", index, indent=1)
    return index


class TokenShards:
    """Read-only view of one split: a list of memmaps addressed as one flat token stream."""

    def __init__(self, shard_dir: str | Path, split: str = "train"):
        self.dir = Path(shard_dir)
        path = self.dir / "index.json"
        try:
            self.index = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: not found (run `phiforge data tokenize` first)") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if split not in self.index.get("splits", {}):
            raise DataError(f"{path}: no split {split!r} (has {sorted(self.index.get('splits', {}))})")
        dtype = np.dtype(self.index["dtype"])
        self.eos_id = self.index["eos_id"]
        self.arrays = []
        for f in self.index["splits"][split]["files"]:
            arr = np.memmap(self.dir / f["path"], dtype=dtype, mode="r")
            if len(arr) != f["tokens"]:
                raise DataError(f"{self.dir / f['path']}: {len(arr)} tokens, index.json says {f['tokens']}")
            self.arrays.append(arr)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens [start, start+n) of the concatenated stream, crossing file boundaries."""
        if start < 0 or start + n > len(self):
            raise IndexError(f"read({start}, {n}) outside 0..{len(self)}")
        out, i = [], int(np.searchsorted(self.offsets, start, side="right") - 1)
        while n > 0:
            lo = start - self.offsets[i]
            chunk = self.arrays[i][lo : lo + n]
            out.append(chunk)
            n -= len(chunk)
            start += len(chunk)
            i += 1
        return np.concatenate(out) if len(out) != 1 else np.array(out[0])

    def documents(self):
        """Yield each document's tokens (without its EOS): for inspection and tests, not training."""
        for arr in self.arrays:
            ends = np.flatnonzero(arr == self.eos_id)
            start = 0
            for e in ends:
                yield np.array(arr[start:e])
                start = e + 1
