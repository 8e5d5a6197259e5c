"""Benchmark tasks: each module turns a standard public file into items the harness can score.

Two shapes: `MCItem` (multiple choice, scored by log-likelihood of each option) and `GenItem` (a prompt
that is completed by the engine, then checked: exact match, number match or executed tests).
`TASKS` maps a task name to a `Task`; `shots` follows the Phi-3 report (arXiv 2404.14219, table 3)
where it states them, and `setting` says in words what a report prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ... import io


@dataclass
class MCItem:
    id: str
    pairs: list[tuple[str, str]]  # one (context, continuation) per option
    gold: int  # index of the right option (mc2: -1, see labels)
    norm: list[str]  # the option strings whose length normalizes acc_norm (lm-eval: doc_to_choice)
    labels: list[int] | None = None  # TruthfulQA MC2: 1 = true answer, 0 = false


@dataclass
class GenItem:
    id: str
    prompt: str
    target: object  # what the checker compares against (a number, a string, tests)
    stop: list[str] = field(default_factory=list)
    max_new_tokens: int = 256
    meta: dict = field(default_factory=dict)
    chat: bool = False  # prompt is one user message, sent through the model's chat template


@dataclass
class Task:
    name: str
    kind: str  # "mc" | "mc2" | "gen" | "code" | "judged" | "mt_bench"
    shots: int
    setting: str
    load: Callable  # (data_dir: Path | None, limit: int | None, shots: int) -> list[items]
    # gen: check(item, text) -> dict with at least {"correct": bool}; code: program(item, text) -> str
    check: Callable | None = None
    program: Callable | None = None
    # judged: judge(judge, items, texts) -> one dict per item with at least {"defect": bool}
    judge: Callable | None = None


class DataError(ValueError):
    """A benchmark file is missing or malformed; the message names the file."""


def need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    return path


def read_jsonl(path: Path, what: str) -> list[dict]:
    need(path, what)
    try:
        return list(io.read_jsonl(path))
    except (OSError, UnicodeDecodeError, io.JsonlError) as e:
        raise DataError(f"{what} file {e}") from None


def field_of(row: dict, key: str, path: Path, n: int):
    if key not in row:
        raise DataError(f"{path} record {n}: missing field {key!r}")
    return row[key]


def data_path(data_dir: Path | None, *parts: str) -> Path:
    if data_dir is None:
        raise DataError(f"no --data folder given: need {'/'.join(parts)} under it")
    return Path(data_dir).joinpath(*parts)


def other_shots(items: list, i: int, k: int) -> list:
    """k few-shot examples from the same split, never the item itself (used where no train split exists,
    as lm-eval does): the first k items other than i, so every run sees the same shots."""
    return [x for j, x in enumerate(items[: k + 1]) if j != i][:k]


def registry() -> dict[str, Task]:
    from . import arith, bbh, code, gsm8k, mc, mt_bench, safety, sanity

    tasks: dict[str, Task] = {}
    for mod in (code, gsm8k, arith, mc, bbh, sanity, safety, mt_bench):
        for t in mod.tasks():
            tasks[t.name] = t
    return tasks
