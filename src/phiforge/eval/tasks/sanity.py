"""`sanity`: classic reasoning puzzles and short coding problems written for phiforge, with checkable
answers. Not a benchmark (11 items): a quick look at whether a small model reasons or pattern-matches.

Puzzles are checked on the first line of the answer: a regex that must match (the right answer) and one
that must not (the tempting wrong answer). Coding problems are completed like HumanEval and their tests
run in the sandbox.
"""

from __future__ import annotations

import re

from ...sandbox import Limits, run_program
from . import GenItem, Task

# (id, question, must match, must not match): the first number / word of the first answer line decides
PUZZLES = [
    (
        "drying_shirts",
        "It takes 1 hour to dry 5 shirts laid out in the sun. How long does it take to dry 30 shirts laid "
        "out the same way, with plenty of room?",
        r"\b(1|one)\s*hour",
        r"\b(6|six)\s*hours",
    ),
    (
        "killers_in_a_room",
        "There are three killers in a room. Someone enters the room and kills one of them. Nobody leaves "
        "the room. How many killers are in the room?",
        r"\b(3|three|4|four)\b",
        r"^\W*(there (are|is|will be) )?(2|two)\b",
    ),
    (
        "transitive_speed",
        "Alice is faster than Bob. Bob is faster than Carol. Is Carol faster than Alice? Answer yes or no.",
        r"^\W*no\b",
        r"^\W*yes\b",
    ),
    (
        "sallys_sisters",
        "Sally is a girl. She has 3 brothers. Each brother has 2 sisters. How many sisters does Sally have?",
        r"\b(1|one)\b",
        r"\b(2|two|6|six)\b",
    ),
    (
        "bat_and_ball",
        "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How many cents does "
        "the ball cost?",
        r"\b(5|five)\b|\$0?\.05\b",
        r"\b(10|ten)\b",
    ),
    (
        "lily_pads",
        "A patch of lily pads doubles in size every day. It takes 48 days to cover the whole lake. How many "
        "days does it take to cover half of the lake?",
        r"\b47\b",
        r"\b24\b",
    ),
    (
        "widgets",
        "If 5 machines take 5 minutes to make 5 widgets, how many minutes would 100 machines take to make "
        "100 widgets?",
        r"\b(5|five)\b",
        r"\b100\b",
    ),
    (
        "days_after_friday",
        "What day of the week comes two days after Friday?",
        r"\bsunday\b",
        r"\b(saturday|monday)\b",
    ),
]

CODING = [
    (
        "is_palindrome",
        'def is_palindrome(s: str) -> bool:\n    """True if s reads the same backwards, ignoring case and every '
        'character that is not a letter or digit.\n    >>> is_palindrome("A man, a plan, a canal: Panama")\n'
        '    True\n    """\n',
        "assert is_palindrome('A man, a plan, a canal: Panama')\nassert not is_palindrome('abc')\n"
        "assert is_palindrome('')\nassert is_palindrome('No lemon, no melon')\n",
    ),
    (
        "fizzbuzz",
        'def fizzbuzz(n: int) -> list:\n    """The strings for 1..n: "Fizz" for multiples of 3, "Buzz" for '
        'multiples of 5,\n    "FizzBuzz" for both, else the number as a string.\n    >>> fizzbuzz(5)\n'
        "    ['1', '2', 'Fizz', '4', 'Buzz']\n    \"\"\"\n",
        "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']\nassert fizzbuzz(15)[-1] == 'FizzBuzz'\n"
        "assert fizzbuzz(0) == []\n",
    ),
    (
        "second_largest",
        'def second_largest(xs: list) -> int:\n    """The second largest distinct value in xs (None if there is '
        'none).\n    >>> second_largest([3, 1, 3, 2])\n    2\n    """\n',
        "assert second_largest([3, 1, 3, 2]) == 2\nassert second_largest([7]) is None\n"
        "assert second_largest([5, 5]) is None\nassert second_largest([-1, -2]) == -2\n",
    ),
]


def load(data_dir, limit, shots) -> list[GenItem]:
    items = [
        GenItem(
            f"sanity/{i}",
            f"Question: {q}\nAnswer:",
            (good, bad),
            stop=["\nQuestion:", "\n\n"],
            max_new_tokens=64,
        )
        for i, q, good, bad in PUZZLES
    ]
    items += [
        GenItem(
            f"sanity/{i}",
            prompt,
            tests,
            stop=["\ndef", "\nclass", "\nif", "\nprint", "\n#"],
            max_new_tokens=200,
        )
        for i, prompt, tests in CODING
    ]
    return items[:limit] if limit else items


def check(item: GenItem, text: str) -> dict:
    if isinstance(item.target, str):  # coding: run the tests
        res = run_program(f"{item.prompt}{text}\n{item.target}", Limits(timeout=5, cpu_seconds=5))
        return {"correct": res.passed, "status": res.status, "detail": res.detail}
    good, bad = item.target
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "").lower()
    ok = bool(re.search(good, line)) and not re.search(bad, line)
    return {"correct": ok, "extracted": line[:200]}


def tasks() -> list[Task]:
    return [
        Task(
            "sanity",
            "gen",
            0,
            "8 puzzles (regex on the first answer line) + 3 coding problems (sandbox)",
            load,
            check=check,
        )
    ]
