"""Textbook-quality data: sources -> annotate -> classify -> filter -> dedup -> decontaminate -> shards.

Every stage is a datatrove pipeline step (or a short list of them), so the same code runs under
`LocalPipelineExecutor` here and `SlurmPipelineExecutor` / `RayPipelineExecutor` on a cluster.
Documents are datatrove `Document(text, id, metadata)` rows stored as jsonl.gz between stages.
"""


class DataError(ValueError):
    """Bad data input: the message is one line naming the file, field or value."""


def _quiet_datatrove_task_logs() -> None:
    """Keep datatrove's per-task log files but not its INFO lines on stderr (errors still show).

    Installed at import, when PHIFORGE_QUIET_DATATROVE=1: datatrove's worker processes fork from a
    forkserver that preloads this package (stage.quiet_logs asks for it), so this is how it reaches them.
    """
    import sys

    import datatrove.executor.base as base
    from loguru import logger

    orig = base.add_task_logger
    if getattr(orig, "_phiforge_quiet", False):
        return

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")  # where datatrove puts it
        logger.remove()
        logger.add(logfile, level="DEBUG", colorize=False)
        # a failing task's traceback goes to its log file; the parent prints the one-line error
        logger.add(sys.stderr, level="CRITICAL", colorize=False, format="{message}")
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        logger.complete()
        logfile.close()
        logger.remove()  # datatrove re-adds its INFO stderr sink here; keep warnings only
        logger.add(sys.stderr, level="WARNING", colorize=False, format="{message}")

    add_task_logger._phiforge_quiet = True
    base.add_task_logger = add_task_logger
    base.close_task_logger = close_task_logger


import os as _os  # noqa: E402

if _os.environ.get("PHIFORGE_QUIET_DATATROVE") == "1":
    _quiet_datatrove_task_logs()
