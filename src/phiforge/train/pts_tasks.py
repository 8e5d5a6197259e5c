"""Problems with oracles for Pivotal Token Search: a question for the chat template and a checker that says
whether a whole answer is right, taken from the eval tasks' own checkers so search and measurement agree.

- arith: generated word problems (eval/tasks/arith.py), train seeds only; exact integer, GSM8K's extraction.
- gsm8k: GSM8K's train split (the test split is for measuring); GSM8K's final-number checker.
- code:  any jsonl of {"prompt", "tests"} (tests: a string or a list of assert lines); the answer's first
         fenced code block (or the whole answer) plus the tests, run in the sandbox, in parallel.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..eval.tasks import DataError, GenItem, arith, field_of, gsm8k, read_jsonl
from ..sandbox import Limits, run_many

TASKS = ("arith", "gsm8k", "code")


@dataclass
class Problem:
    id: str
    question: str  # the user message
    target: object  # the answer (math) or the test code (code)
    max_new_tokens: int


def load(
    task: str, data: Path | None, limit: int | None, knobs: arith.Knobs = arith.Knobs(), split: str = "train"
) -> list[Problem]:
    """Problems of `task`; arith's held-out test split (split="test") is for measuring, never for search."""
    if task == "arith":
        tag = "arith/" if split == "train" else f"arith/{split}/"
        return [
            Problem(f"{tag}{p.seed}", p.question, p.answer, 64)
            for p in arith.split(split, limit or 50, knobs)
        ]
    if task == "gsm8k":
        path = _gsm8k_file(data)
        rows = read_jsonl(path, "GSM8K")[:limit] if limit else read_jsonl(path, "GSM8K")
        return [
            Problem(
                f"gsm8k/train/{n - 1}",
                field_of(r, "question", path, n),
                gsm8k.gold_answer(field_of(r, "answer", path, n)),
                256,
            )
            for n, r in enumerate(rows, 1)
        ]
    if task == "code":
        if data is None or not Path(data).is_file():
            raise DataError(f"code task: --data must be a jsonl file of {{prompt, tests}} rows, got {data}")
        rows = read_jsonl(Path(data), "code problems")
        out = []
        for n, r in enumerate(rows[:limit] if limit else rows, 1):
            tests = field_of(r, "tests", data, n)
            if isinstance(tests, list):
                tests = "\n".join(tests)
            if not isinstance(tests, str) or not tests.strip():
                raise DataError(f"{data} record {n}: field 'tests' must be code or a list of assert lines")
            out.append(Problem(str(r.get("id", f"code/{n - 1}")), field_of(r, "prompt", data, n), tests, 256))
        return out
    raise ValueError(f"unknown PTS task {task!r}: choose from {', '.join(TASKS)}")


def chat_prompt(tok, p: Problem) -> tuple[list[int], str]:
    """(ids, text) of the question as the one user message of the model's chat template: the prompt PTS
    samples with and `accuracy` measures with."""
    msgs = [{"role": "user", "content": p.question}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True), tok.render_chat(
        msgs, add_generation_prompt=True
    )


def accuracy(engine, task: str, problems: list[Problem], max_batch: int = 64) -> tuple[float, list[bool]]:
    """Greedy accuracy of `engine` on `problems`, chat-prompted as PTS samples them, checked by the task's
    oracle (the harness's arith task is few-shot Q:/A: text, a different prompt from the one trained on)."""
    from ..infer.sampling import SamplingParams

    order = sorted(range(len(problems)), key=lambda i: len(problems[i].question))  # similar lengths pad less
    ok = [False] * len(problems)
    for b in range(0, len(order), max_batch):
        idx = order[b : b + max_batch]
        params = SamplingParams(max_new_tokens=max(problems[i].max_new_tokens for i in idx))
        res = engine.generate([chat_prompt(engine.tok, problems[i])[0] for i in idx], params)
        texts = [
            engine.tok.decode(r.tokens[: problems[i].max_new_tokens], skip_special_tokens=True)
            for i, r in zip(idx, res, strict=True)
        ]
        for i, v in zip(
            idx, check_many(task, [(problems[i], t) for i, t in zip(idx, texts, strict=True)]), strict=True
        ):
            ok[i] = bool(v)
    return sum(ok) / max(1, len(ok)), ok


def _gsm8k_file(data: Path | None) -> Path:
    """--data may be the train.jsonl itself, a gsm8k folder, or the benchmarks folder holding gsm8k/."""
    if data is None:
        raise DataError("gsm8k task: no --data given (the GSM8K train.jsonl or the folder holding it)")
    data = Path(data)
    for p in (data, data / "train.jsonl", data / "gsm8k" / "train.jsonl"):
        if p.is_file():
            return p
    raise DataError(f"gsm8k task: no train.jsonl at {data} (nor {data}/gsm8k/train.jsonl)")


_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)


def code_of(answer: str) -> str:
    """The first fenced code block of a chat answer (an unclosed one runs to the end), else the answer."""
    m = _FENCE.search(answer)
    return m.group(1) if m else answer


def check_many(task: str, jobs: list[tuple[Problem, str]], timeout: float = 5.0) -> list[bool]:
    """Whether each (problem, whole answer) is right; code runs its sandboxes in parallel."""
    if task == "code":
        programs = [f"{code_of(text)}\n\n{p.target}\n" for p, text in jobs]
        lim = Limits(timeout=timeout, cpu_seconds=max(1, int(timeout)))
        return [r.passed for r in run_many(programs, lim, workers=os.cpu_count() or 1)]
    return [gsm8k.check(GenItem(p.id, "", str(p.target)), text)["correct"] for p, text in jobs]
