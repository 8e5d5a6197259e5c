"""Files: the one atomic write and the one jsonl reader of phiforge (imports nothing of phiforge), and the
one progress bar long jobs show on the terminal.

Every file phiforge writes goes through `atomic_path`: the bytes land in a hidden temp file beside the target
and `os.replace` moves it over the target when complete, so a reader (or a re-run after a kill) sees the old
file or the new one, never half of one. Every jsonl file is read by `read_jsonl`, whose error names the
file and line of a bad row.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class JsonlError(ValueError):
    """A jsonl line that is not valid JSON; the message is `file:line: ...`."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed.

    For writers that want a name: safetensors, GGUF, a compiler's -o, or a whole directory (a checkpoint),
    which replaces an existing directory of that name. The temp name is unique per call, so concurrent
    writers of the same target never share a temp file; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # a directory cannot be renamed over a non-empty one
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj, indent: int = 2) -> Path:
    """JSON (UTF-8, non-ASCII kept, unknown types as str) + newline, atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """One JSON object per line, atomically; a `.gz` name is gzip-compressed."""
    path = Path(path)
    with atomic_path(path) as tmp:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


def read_jsonl(path: str | Path, numbered: bool = False) -> Iterator:
    """Yield the rows of a jsonl (or .jsonl.gz) file, or (line number, row) pairs; blank lines are skipped.

    A line that is not valid JSON raises JsonlError("<file>:<line>: not valid JSON (<why>)"). `numbered`
    is for callers that check the rows and want their own errors to name the line too.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as f:  # -sig: a BOM some editors write is not JSON
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise JsonlError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            yield (n, row) if numbered else row


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of a training run's metrics.jsonl (`run` is the run directory or the file itself).

    A run that has not logged yet has no file: that reads as no rows.
    """
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    return list(read_jsonl(path)) if path.is_file() else []


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 90) -> Path:
    """A matplotlib figure as a PNG, atomically; the figure is closed."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write(path, buf.getvalue())


def progress_bar(console=None):
    """rich's progress bar as every long phiforge job shows it: what, bar, done/total, elapsed, eta."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )  # fmt: skip
    return Progress(*cols, console=console)
