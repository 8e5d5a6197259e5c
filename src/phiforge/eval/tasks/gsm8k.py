"""GSM8K: 8-shot chain of thought (the exemplars of Wei et al. 2022, as lm-eval's gsm8k_cot), final number."""

from __future__ import annotations

import re
from fractions import Fraction

from . import GenItem, Task, data_path, field_of, read_jsonl

EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
]

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+"
_STRICT = re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?\s*(" + _NUM + r")")
_ANY = re.compile(_NUM)


def to_number(s: str) -> Fraction | None:
    """'1,234' -> 1234, '$5.50' -> 11/2, '7.' -> 7; None if not a number."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> tuple[str | None, str]:
    """The model's final number: 'The answer is N' if present (strict), else the last number in the text
    (flexible). Returns (number string or None, which rule matched)."""
    text = text.split("\nQ:")[0]  # a model that keeps going invents the next question
    m = _STRICT.findall(text)
    if m:
        return m[-1].replace("$", ""), "strict"
    nums = _ANY.findall(text)
    return (nums[-1].replace("$", ""), "flexible") if nums else (None, "none")


def gold_answer(solution: str) -> str:
    return solution.split("####")[-1].strip()


def load(data_dir, limit, shots) -> list[GenItem]:
    path = data_path(data_dir, "gsm8k", "test.jsonl")
    rows = read_jsonl(path, "GSM8K")
    head = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in EXEMPLARS[:shots])
    items = []
    for n, r in enumerate(rows[:limit] if limit else rows, 1):
        q, a = field_of(r, "question", path, n), field_of(r, "answer", path, n)
        items.append(
            GenItem(
                f"gsm8k/{n - 1}", f"{head}Q: {q}\nA:", gold_answer(a), stop=["Q:", "\n\n"], max_new_tokens=256
            )
        )
    return items


def check(item: GenItem, text: str) -> dict:
    ans, rule = extract_answer(text)
    got, want = to_number(ans) if ans else None, to_number(str(item.target))
    return {"correct": got is not None and got == want, "extracted": ans, "rule": rule}


def tasks() -> list[Task]:
    return [
        Task(
            "gsm8k",
            "gen",
            8,
            "8-shot chain of thought (Wei et al. exemplars), greedy, final number: 'The answer is N' else last number",
            load,
            check=check,
        )
    ]
