"""Which teacher method works with a small in-process model: the usable rate of each method (text, geval,
askllm) and the Spearman agreement of its scores with the heuristic teacher's, on the same sample.

Runs `phiforge data annotate` once per method (skipped when OUT/ann-<method> exists: a re-run only
recomputes the table), on documents harvested from the embedded corpus (`data harvest`, local Python code).

    python benchmarks/bench_teacher.py --out runs/teacher-methods [--sample 60] [--teacher smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

from phiforge.data.sources import iter_documents

METHODS = ("geval", "askllm", "text")


def _phiforge(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "phiforge.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _scores(folder: Path) -> dict[str, float]:
    return {d.id: float(d.metadata["teacher_score"]) for d in iter_documents(folder)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/teacher-methods"))
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--max-mb", type=float, default=3.0, help="corpus harvested (MB of source files)")
    a = ap.parse_args()
    raw, common = a.out / "raw", ("--sample", a.sample, "--tasks", 1, "--workers", 1)
    if not raw.exists():
        _phiforge("data", "harvest", raw, "--max-mb", a.max_mb, "--tasks", 1, "--workers", 1)
    if not (a.out / "ann-heuristic").exists():
        _phiforge("data", "annotate", raw, a.out / "ann-heuristic", *common)
    heur = _scores(a.out / "ann-heuristic")
    print(f"{len(heur)} documents sampled; teacher {a.teacher} in-process")
    print(f"{'method':<8} {'usable':>10} {'seconds':>8} {'spearman vs heuristic':>22}  mean score")
    for m in METHODS:
        out, secs = a.out / f"ann-{m}", float("nan")
        if not out.exists():
            t = time.time()
            p = _phiforge(
                "data", "annotate", raw, out, *common, "--teacher", a.teacher, "--teacher-method", m
            )
            secs = time.time() - t
            if p.returncode:  # fewer than half usable: annotate stops with the rate and an example answer
                print(f"{m:<8} stopped: {p.stderr.strip().splitlines()[-1][:300]}")
                continue
        got = _scores(out)
        ids = sorted(set(got) & set(heur))
        rho = (
            spearmanr([got[i] for i in ids], [heur[i] for i in ids]).statistic
            if len(ids) > 2
            else float("nan")
        )
        mean = sum(got.values()) / max(len(got), 1)
        print(f"{m:<8} {len(got):>4}/{len(heur):<5} {secs:>8.0f} {rho:>22.3f}  {mean:.2f}")


if __name__ == "__main__":
    main()
