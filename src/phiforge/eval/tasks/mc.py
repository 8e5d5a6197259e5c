"""Multiple-choice tasks scored by log-likelihood (acc, acc_norm): MMLU, ARC, HellaSwag, PIQA, WinoGrande,
TruthfulQA MC1/MC2. Prompts are lm-evaluation-harness's, so numbers are comparable with its tasks.

Few-shot examples: MMLU from its dev split; the others from the same split excluding the item itself
(the local copies have no train split), joined with a blank line as lm-eval does.
"""

from __future__ import annotations

import bz2
import csv
import json
from pathlib import Path

from . import DataError, MCItem, Task, data_path, field_of, need, other_shots, read_jsonl

LETTERS = "ABCD"


# ---- MMLU ------------------------------------------------------------------------------------------
def _mmlu_rows(path: Path) -> list[tuple[str, list[str], int]]:
    need(path, "MMLU")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, r in enumerate(csv.DictReader(f), 1):
            try:
                choices = [r[f"choice{i}"] for i in range(4)]
                rows.append((r["question"], choices, int(r["answer"])))
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path} row {n}: expected question,choice0..3,answer(0-3) ({e})") from None
    return rows


def _mmlu_text(q: str, choices: list[str]) -> str:
    return q.strip() + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, choices, strict=False)) + "\nAnswer:"


def load_mmlu(data_dir, limit, shots) -> list[MCItem]:
    test_dir = data_path(data_dir, "mmlu", "test")
    subjects = sorted(p.name[: -len("_test.csv")] for p in test_dir.glob("*_test.csv"))
    if not subjects:
        raise DataError(f"MMLU test folder not found or empty: {test_dir}")
    items = []
    for s in subjects:
        dev = _mmlu_rows(data_path(data_dir, "mmlu", "dev", f"{s}_dev.csv"))[:shots]
        head = f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n"
        head += "".join(f"{_mmlu_text(q, c)} {LETTERS[a]}\n\n" for q, c, a in dev)
        rows = _mmlu_rows(test_dir / f"{s}_test.csv")
        for n, (q, c, a) in enumerate(rows[:limit] if limit else rows):
            ctx = head + _mmlu_text(q, c)
            items.append(MCItem(f"mmlu/{s}/{n}", [(ctx, f" {L}") for L in LETTERS], a, list(LETTERS)))
    return items


# ---- generic query/choices tasks ----------------------------------------------------------------------
def _mc_items(name: str, docs: list[tuple[str, list[str], int]], limit, shots, sep=" ") -> list[MCItem]:
    """docs: (query text ending where the answer starts, options, gold). Shots: query + sep + gold option."""
    items = []
    for i, (q, opts, gold) in enumerate(docs[:limit] if limit else docs):
        head = "".join(f"{sq}{sep}{so[sg]}\n\n" for sq, so, sg in other_shots(docs, i, shots))
        items.append(MCItem(f"{name}/{i}", [(head + q, sep + o) for o in opts], gold, opts))
    return items


def load_arc(name: str):
    def load(data_dir, limit, shots):
        path = data_path(data_dir, name, "test.jsonl")
        docs = []
        for n, r in enumerate(read_jsonl(path, name), 1):
            q = field_of(r, "question", path, n)
            labels = [c["label"] for c in q["choices"]]
            key = field_of(r, "answerKey", path, n)
            if key not in labels:
                raise DataError(f"{path} record {n}: answerKey {key!r} not among labels {labels}")
            docs.append(
                (f"Question: {q['stem']}\nAnswer:", [c["text"] for c in q["choices"]], labels.index(key))
            )
        return _mc_items(name, docs, limit, shots)

    return load


def load_hellaswag(data_dir, limit, shots):
    path = need(data_path(data_dir, "hellaswag", "hellaswag_val_full.txt.bz2"), "HellaSwag")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(
            f"{path}: expected 6 lines per item (context, label, 4 endings), got {len(lines)} lines"
        )
    docs = []
    for k in range(0, len(lines), 6):
        ctx, label, *ends = lines[k : k + 6]
        if label not in "0123" or not label:
            raise DataError(f"{path} line {k + 2}: label {label!r} is not 0-3")
        docs.append((ctx, ends, int(label)))
    return _mc_items("hellaswag", docs, limit, shots)


def load_piqa(data_dir, limit, shots):
    path = data_path(data_dir, "piqa", "piqa.jsonl")
    docs = []
    for n, r in enumerate(read_jsonl(path, "PIQA"), 1):
        q = field_of(r, "query", path, n).rstrip("\n")  # "Question: <goal>\n" in llm-foundry's format
        docs.append((f"{q}\nAnswer:", field_of(r, "choices", path, n), int(field_of(r, "gold", path, n))))
    return _mc_items("piqa", docs, limit, shots)


def load_winogrande(data_dir, limit, shots):
    """Partial scoring (lm-eval): the option fills the blank in the context; the shared rest is scored."""
    path = data_path(data_dir, "winogrande", "winogrande.jsonl")
    docs = []
    for n, r in enumerate(read_jsonl(path, "WinoGrande"), 1):
        opts, cont = field_of(r, "context_options", path, n), field_of(r, "continuation", path, n)
        docs.append((opts, cont.strip(), int(field_of(r, "gold", path, n))))
    items = []
    for i, (opts, cont, gold) in enumerate(docs[:limit] if limit else docs):
        head = "".join(f"{so[sg]} {sc}\n\n" for so, sc, sg in other_shots(docs, i, shots))
        items.append(MCItem(f"winogrande/{i}", [(head + o, " " + cont) for o in opts], gold, opts))
    return items


# ---- TruthfulQA ---------------------------------------------------------------------------------------
# The QA primer of Lin et al. (2021) that lm-eval's truthfulqa_mc1/mc2 put before every question.
TQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def load_truthfulqa(which: str):
    def load(data_dir, limit, shots):
        path = need(data_path(data_dir, "truthfulqa", "data", "mc_task.json"), "TruthfulQA")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"TruthfulQA file {path}: invalid JSON ({e.msg})") from None
        items = []
        for n, r in enumerate(rows[:limit] if limit else rows):
            targets = field_of(r, f"{which}_targets", path, n + 1)
            opts, labels = list(targets), [int(v) for v in targets.values()]
            ctx = f"{TQA_PRIMER}\n\nQ: {field_of(r, 'question', path, n + 1)}\nA:"
            gold = labels.index(1) if which == "mc1" else -1
            items.append(
                MCItem(f"truthfulqa_{which}/{n}", [(ctx, " " + o) for o in opts], gold, opts, labels=labels)
            )
        return items

    return load


def tasks() -> list[Task]:
    lm = "lm-eval prompt, acc + acc_norm (loglikelihood / option length in characters)"
    return [
        Task("mmlu", "mc", 5, f"5-shot from dev per subject; {lm}; --limit per subject", load_mmlu),
        Task("arc_easy", "mc", 10, f"10-shot (same split, item excluded); {lm}", load_arc("arc_easy")),
        Task(
            "arc_challenge", "mc", 10, f"10-shot (same split, item excluded); {lm}", load_arc("arc_challenge")
        ),
        Task("hellaswag", "mc", 5, f"5-shot (same split, item excluded); {lm}", load_hellaswag),
        Task("piqa", "mc", 5, f"5-shot (same split, item excluded); {lm}", load_piqa),
        Task(
            "winogrande",
            "mc",
            5,
            f"5-shot, partial scoring (same split, item excluded); {lm}",
            load_winogrande,
        ),
        Task(
            "truthfulqa_mc1",
            "mc",
            0,
            "TruthfulQA QA primer (6 fixed QA pairs) + question, as lm-eval (the Phi-3 report says 10-shot; "
            "TruthfulQA has no train split to draw them from)",
            load_truthfulqa("mc1"),
        ),
        Task(
            "truthfulqa_mc2",
            "mc2",
            0,
            "TruthfulQA QA primer + question; MC2 = normalized probability mass of the true answers (lm-eval)",
            load_truthfulqa("mc2"),
        ),
    ]
