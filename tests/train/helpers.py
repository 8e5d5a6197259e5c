"""Run `phiforge train` in a subprocess (one thread, src/ first on the path), as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

SRC = str(Path(__file__).resolve().parents[2] / "src")


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
