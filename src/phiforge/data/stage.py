"""Running one datatrove stage: quiet logs, exact merged stats, and failed tasks as one clear error.

The done-markers that let a finished stage be skipped are `phiforge.stages`; a stage killed half-way has no
marker, and datatrove's own completion files under `logs/` make the re-run skip the tasks that had finished.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor


def reset(*dirs: Path) -> None:
    """Remove a stage's outputs and logs before redoing it with new settings."""
    for d in dirs:
        if Path(d).exists():
            shutil.rmtree(d)


EXECUTORS = ("local", "slurm", "ray")
_default = {"executor": "local", "opts": {}}  # what the CLI's --executor chose, for every stage of a command


def use_executor(kind: str, opts: dict | None = None) -> None:
    """Run every later pipeline of this process on `kind` (the CLI's --executor, one command per process)."""
    if kind not in EXECUTORS:
        raise ValueError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
    make_executor(kind, [], 1, 1, "/nonexistent", opts)  # bad options fail now, before any stage runs
    _default.update(executor=kind, opts=dict(opts or {}))


def make_executor(kind: str, pipeline: list, tasks: int, workers: int, logging_dir, opts: dict | None = None):
    """datatrove's executor of that kind. slurm needs `partition` and `time` in opts (any other
    SlurmPipelineExecutor argument may be given too); ray needs a reachable ray cluster (`ray start`)."""
    common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(logging_dir), **(opts or {})}
    if kind == "local":
        return LocalPipelineExecutor(workers=max(1, min(workers, tasks)), **common)
    try:
        if kind == "slurm":
            from datatrove.executor.slurm import SlurmPipelineExecutor as Executor

            missing = [k for k in ("partition", "time") if k not in common]
            if missing:
                raise ValueError(f"--executor slurm: give {' and '.join(missing)} (--executor-opt key=value)")
        elif kind == "ray":
            from datatrove.executor.ray import RayPipelineExecutor as Executor

            if importlib.util.find_spec("ray") is None:  # datatrove only finds out in run()
                raise ImportError("the ray package is not installed")
        else:
            raise ValueError(f"--executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
        return Executor(workers=workers, **common)
    except ImportError as e:  # datatrove checks its extras (ray, submitit) when the executor is built
        raise ValueError(f"--executor {kind}: {e} (pip install 'datatrove[{kind}]')") from None


def run_pipeline(
    pipeline: list, logging_dir: Path, tasks: int, workers: int, quiet: bool = True, executor=None, opts=None
) -> dict:
    """Run `pipeline` on a datatrove executor (local unless told); return {"<i>. <step name>": {metric: total}}.

    A slurm job array is waited for (polling its completion files), so the next stage sees finished output."""
    kind = executor or _default["executor"]
    ex = make_executor(
        kind, pipeline, tasks, workers, logging_dir, opts if opts is not None else _default["opts"]
    )
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise ValueError("--executor slurm: no sbatch on PATH (run this on a slurm login node)")
    with quiet_logs() if quiet else contextlib.nullcontext():
        ex.run()
    if kind == "slurm":
        _wait_for_tasks(logging_dir, tasks, ex.job_id)
    _raise_on_failed_tasks(logging_dir, tasks)
    return merged_stats(logging_dir)


def _wait_for_tasks(logging_dir: Path, tasks: int, job_id, poll: float = 30.0) -> None:
    """Until every task has its completion file, or the job has left the queue (then some failed)."""
    import subprocess
    import time

    from rich.console import Console

    Console(stderr=True).print(f"  waiting for slurm job {job_id}: {tasks} tasks, logs in {logging_dir}")
    while len(list((Path(logging_dir) / "completions").glob("*"))) < tasks:
        queued = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True).stdout
        if not queued.strip():
            return
        time.sleep(poll)


def merged_stats(logging_dir: Path) -> dict:
    """Sum the per-task stats files, so a resumed stage still reports every task's counts.

    Keys carry the step's position: a reader and a writer may share a name ("🐿 Jsonl").
    """
    out: dict[str, dict[str, float]] = {}
    for f in sorted((Path(logging_dir) / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(f.read_text())):
            agg = out.setdefault(f"{i}. {step['name']}", {})
            for k, v in step["stats"].items():
                total = v["total"] if isinstance(v, dict) else v
                agg[k] = agg.get(k, 0) + total
    return out


def _raise_on_failed_tasks(logging_dir: Path, tasks: int) -> None:
    done = {p.name for p in (Path(logging_dir) / "completions").glob("*")}
    missing = [r for r in range(tasks) if f"{r:05d}" not in done]
    if missing:
        log = Path(logging_dir) / "logs" / f"task_{missing[0]:05d}.log"
        raise RuntimeError(f"{len(missing)} of {tasks} tasks failed; first log: {log}")


_quiet_depth = 0


@contextlib.contextmanager
def quiet_logs():
    """datatrove logs every task to stderr at INFO; keep its per-task log files, drop the stderr copy.

    Our own progress display says what a user needs; the full logs stay under logs/<stage>/logs/.
    Re-entrant: a whole run and the stages inside it can both ask for it.
    """
    global _quiet_depth
    from loguru import logger

    from . import _quiet_datatrove_task_logs

    _quiet_depth += 1
    env = {k: os.environ.get(k) for k in ("PHIFORGE_QUIET_DATATROVE", "TQDM_DISABLE")}
    if _quiet_depth == 1:
        os.environ["PHIFORGE_QUIET_DATATROVE"] = "1"  # reaches forkserver workers (see data/__init__.py)
        os.environ["TQDM_DISABLE"] = "1"  # datatrove's per-file bars in MinHash stages
        _quiet_datatrove_task_logs()  # and this process, for workers=1
        import multiprocess

        # datatrove's workers fork from a forkserver; preloading us there applies the patch to all of them
        multiprocess.get_context("forkserver").set_forkserver_preload(["phiforge.data"])
        logger.remove()  # the parent's default INFO sink ("Launching pipeline ...")
        logger.add(sys.stderr, level="WARNING", format="{message}")
    try:
        yield
    finally:
        _quiet_depth -= 1
        if _quiet_depth == 0:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            logger.remove()
            logger.add(sys.stderr)  # loguru's default sink, as datatrove found it
            import datatrove.executor.base as base
            import datatrove.utils.logging as dl

            base.add_task_logger, base.close_task_logger = dl.add_task_logger, dl.close_task_logger
