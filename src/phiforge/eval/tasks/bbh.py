"""BIG-Bench Hard: the 27 tasks with their official 3-shot chain-of-thought prompts (Suzgun et al. 2022),
exact match of the text after the last 'the answer is'. `--limit` applies per subtask, as in lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

from . import DataError, GenItem, Task, data_path, field_of, need


def subtasks(data_dir: Path | None) -> list[str]:
    d = data_path(data_dir, "bbh", "bbh")
    names = sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
    if not names:
        raise DataError(f"BBH folder not found or empty: {d}")
    return names


def cot_prompt(data_dir: Path | None, name: str) -> str:
    path = need(data_path(data_dir, "bbh", "cot-prompts", f"{name}.txt"), "BBH CoT prompt")
    text = path.read_text(encoding="utf-8")
    # the files start with a canary line and "-----"; the prompt (task description + 3 examples) follows
    return text.split("-----\n", 1)[-1].strip()


def extract(text: str) -> str:
    text = text.split("\n\nQ:")[0]
    k = text.lower().rfind("answer is")
    ans = text[k + len("answer is") :] if k >= 0 else (text.strip().splitlines() or [""])[-1]
    return ans.strip().split("\n")[0].strip().rstrip(".").strip()


def load(data_dir, limit, shots) -> list[GenItem]:
    items = []
    for name in subtasks(data_dir):
        path = data_path(data_dir, "bbh", "bbh", f"{name}.json")
        try:
            examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        except (json.JSONDecodeError, KeyError) as e:
            raise DataError(f"BBH file {path}: expected {{'examples': [...]}} ({e})") from None
        head = cot_prompt(data_dir, name) if shots else ""
        for n, ex in enumerate(examples[:limit] if limit else examples, 1):
            q, a = field_of(ex, "input", path, n), field_of(ex, "target", path, n)
            prompt = f"{head}\n\nQ: {q}\nA: Let's think step by step."
            items.append(
                GenItem(f"bbh/{name}/{n - 1}", prompt.lstrip(), a, stop=["\n\nQ:"], meta={"subtask": name})
            )
    return items


def check(item: GenItem, text: str) -> dict:
    got = extract(text)
    return {"correct": got == str(item.target).strip(), "extracted": got}


def tasks() -> list[Task]:
    return [
        Task(
            "bbh",
            "gen",
            3,
            "3-shot chain of thought (official cot-prompts), 27 subtasks, exact match after 'the answer is'",
            load,
            check=check,
        )
    ]
