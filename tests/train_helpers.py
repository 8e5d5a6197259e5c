"""Shared by tests/train: tiny token-shard folders and recipes, and `phiforge` run in a subprocess
(one thread, src/ first on the path), as a user would. (A unique module name: test folders have no __init__.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import yaml

VOCAB = 512
SRC = str(Path(__file__).resolve().parents[1] / "src")


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.pop("WORLD_SIZE", None)
    return e


def write_recipe(path: Path, r: dict) -> Path:
    path.write_text(yaml.safe_dump(r))
    return path


def cli(*args, nproc: int = 0) -> list[str]:
    if nproc:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        pre = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1"]
        pre += ["--master_port", str(port), "-m", "phiforge.cli"]
    else:
        pre = ["-m", "phiforge.cli"]
    return [sys.executable, *pre, *map(str, args)]


def run(*args, nproc: int = 0, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args, nproc=nproc), env=env(), capture_output=True, text=True, timeout=timeout)


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["type"] == "train"]


def _texts(pattern: str, limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.glob(pattern))[:limit]:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def write_shards(out: Path, tok, texts: list[str], val_every: int = 10) -> Path:
    """index.json + train/val .bin files exactly as data.shards.finalize_index lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    split = {"train": [], "val": []}
    for i, t in enumerate(texts):
        split["val" if i % val_every == 0 else "train"].append(tok.encode(t) + [tok.eos_id])
    index = {"format": "phiforge-token-shards-v1", "dtype": "<u2", "eos_id": tok.eos_id,
             "vocab_size": tok.vocab_size, "tokenizer": None, "splits": {}}  # fmt: skip
    for s, docs in split.items():
        ids = np.concatenate([np.asarray(d, dtype="<u2") for d in docs])
        (out / f"{s}_00000.bin").write_bytes(ids.tobytes())
        f = {"path": f"{s}_00000.bin", "tokens": len(ids), "docs": len(docs)}
        index["splits"][s] = {"files": [f], "tokens": len(ids), "docs": len(docs)}
    (out / "index.json").write_text(json.dumps(index))
    return out


def recipe(data, out, **kw) -> dict:
    """A tiny 2-phase recipe dict (seconds on 2 cores); kw overrides top-level fields."""
    r = {
        "name": "t",
        "out": str(out),
        "preset": "tiny",
        "model_overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
        "tokenizer": str(data["tok"]),
        "seq_len": 64,
        "micro_batch": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_every": 4,
        "eval_tokens": 1024,
        "save_every": 3,
        "peak_flops": 1e11,
        "progress": False,
        "phases": [
            {"name": "p1", "tokens": 6 * 256, "datasets": [{"path": str(data["a"])}]},
            {"name": "p2", "tokens": 4 * 256,
             "datasets": [{"path": str(data["a"]), "weight": 0.3}, {"path": str(data["b"]), "weight": 0.7}]},
        ],
    }  # fmt: skip
    r.update(kw)
    return r
