"""MT-bench (Zheng et al. 2023): 80 two-turn questions in 8 categories, single-answer grading 1-10.

Generation: turn 1 through the model's chat template, then turn 2 with the model's own first answer in the
conversation, greedy (FastChat samples some categories at temperature 0.7; greedy keeps reruns identical).
Answers are stored in FastChat's model_answer format (OUT/eval/mt_bench/answers.jsonl) and reused by a rerun
with the same generation settings, so grading can come later.

Grading (needs a judge endpoint): FastChat's judge prompts verbatim from judge_prompts.jsonl, `single-v1` for
turn 1 and `single-v1-multi-turn` for turn 2; math, reasoning and coding use the `single-math-v1` variants with
the GPT-4 reference answers, as FastChat's gen_judgment.py does (NEED_REF_CATS). The rating is FastChat's
`[[n]]` (else `[n]`) in the judge's reply; a reply with neither is a failed grade (-1) and left out of means.
Reported: mean score over all graded turns, per turn, per category, and a bar chart of the categories.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from ... import io
from . import GenItem, Task, data_path, field_of, read_jsonl

NEED_REF_CATS = ("math", "reasoning", "coding")
MAX_NEW_TOKENS = 1024  # FastChat's gen_model_answer default
_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def load(data_dir, limit, shots) -> list[GenItem]:
    path = data_path(data_dir, "mt_bench", "question.jsonl")
    refs_path = data_path(data_dir, "mt_bench", "reference_answer", "gpt-4.jsonl")
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(refs_path, "MT-bench reference")}
    per_cat: dict[str, int] = defaultdict(int)
    items = []
    for n, r in enumerate(read_jsonl(path, "MT-bench"), 1):
        qid, cat, turns = (field_of(r, k, path, n) for k in ("question_id", "category", "turns"))
        if len(turns) != 2:
            raise ValueError(f"{path} record {n}: 'turns' has {len(turns)} entries, expected 2")
        if limit and per_cat[cat] >= limit:
            continue
        per_cat[cat] += 1
        ref = (refs.get(qid) or r.get("reference")) if cat in NEED_REF_CATS else None
        meta = {"subtask": cat, "question_id": qid, "turns": turns, "reference": ref}
        items.append(
            GenItem(f"mt_bench/{qid}", turns[0], None, max_new_tokens=MAX_NEW_TOKENS, meta=meta, chat=True)
        )
    return items


def judge_prompts(data_dir) -> dict[str, dict]:
    path = data_path(data_dir, "mt_bench", "judge_prompts.jsonl")
    return {r["name"]: r for r in read_jsonl(path, "MT-bench judge prompts")}


def parse_rating(text: str) -> float:
    m = _SCORE.search(text) or _SCORE_BACKUP.search(text)
    return float(m.group(1)) if m else -1.0


def judge_requests(item: GenItem, answers: list[str], prompts: dict[str, dict]) -> list:
    """The two grading requests (turn 1, turn 2) for one answered question."""
    from ...teacher import Request

    q, ref = item.meta["turns"], item.meta["reference"]
    math = "-math" if ref else ""
    fields = {
        "question": q[0],
        "answer": answers[0],
        "question_1": q[0],
        "question_2": q[1],
        "answer_1": answers[0],
        "answer_2": answers[1],
        "ref_answer_1": ref[0] if ref else "",
        "ref_answer_2": ref[1] if ref and len(ref) > 1 else "",
    }
    out = []
    for name in (f"single{math}-v1", f"single{math}-v1-multi-turn"):
        p = prompts[name]
        # FastChat: temperature 0, up to 2048 tokens of judgment
        out.append(Request(p["prompt_template"].format(**fields), max_tokens=2048, system=p["system_prompt"]))
    return out


def summarize(per: list[dict]) -> dict:
    from ..metrics import mean_stderr

    def metric(vals):
        m, se = mean_stderr(vals)
        return {"value": m, "stderr": se}

    graded = [(r, i, s) for r in per for i, s in enumerate(r["scores"]) if s >= 0]
    res = {
        "score": metric([s for _, _, s in graded]),
        "score_turn1": metric([s for _, i, s in graded if i == 0]),
        "score_turn2": metric([s for _, i, s in graded if i == 1]),
    }
    cats = defaultdict(list)
    for r, _, s in graded:
        cats[r["category"]].append(s)
    res["subtasks"] = {c: metric(v) for c, v in sorted(cats.items())}
    res["failed_grades"] = {
        "value": float(sum(s < 0 for r in per for s in r["scores"])),
        "stderr": float("nan"),
    }
    return res


def plot(subtasks: dict[str, dict], path: Path, title: str) -> None:
    cats = list(subtasks)
    fig, ax = io.pyplot().subplots(figsize=(8, 3.6))
    ax.bar(
        cats,
        [subtasks[c]["value"] for c in cats],
        yerr=[subtasks[c]["stderr"] for c in cats],
        color="#4c72b0",
    )
    ax.set_ylim(0, 10)
    ax.set_ylabel("score (1-10)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    io.save_png(fig, path, dpi=120)


def tasks() -> list[Task]:
    return [
        Task(
            "mt_bench",
            "mt_bench",
            0,
            "MT-bench 80 two-turn questions, chat template, greedy, 1024 tokens per turn; single-answer grading 1-10 "
            "by the judge endpoint with FastChat's judge prompts (GPT-4 references for math/reasoning/coding)",
            load,
        )
    ]


def answers_rows(items: list[GenItem], answers: list[list[str]], model_id: str) -> list[dict]:
    """FastChat's model_answer jsonl rows."""
    return [
        {"question_id": it.meta["question_id"], "model_id": model_id, "choices": [{"index": 0, "turns": a}]}
        for it, a in zip(items, answers, strict=True)
    ]
