"""`arith`: procedurally generated arithmetic word problems with exact integer answers.

Problem n of a split is built from its own seed (`random.Random("arith:<knobs>:<seed>")`), so any problem
can be regenerated alone, on any machine. The test split is a fixed seed range (TEST_SEEDS) that training
and Pivotal Token Search never draw from; the train split starts far above it and also skips any problem
whose text equals a test problem's (small operands make collisions possible).

Knobs: `steps` (operations after the starting amount), `max_operand`, `ops` ("+-" or "+-*"). The default
(2 steps, operands up to 30, + and -) is sized for a 135M instruct model: it fails "17 + 25" some of the time,
so it solves a fair share, not all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from . import GenItem, Task
from .gsm8k import check

TEST_SEEDS = range(0, 1000)  # the held-out problems; never used for search or training
TRAIN_SEED0 = 1_000_000

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lily", "Max", "Nora", "Omar", "Rosa", "Sam", "Tara", "Leo"]  # fmt: skip
THINGS = ["apples", "marbles", "stickers", "books", "coins", "cookies", "pencils", "cards", "shells", "stamps"]  # fmt: skip
EXEMPLARS = [  # few-shot exemplars for the harness prompt: the generator's phrasing, drawn from neither split
    (
        "Mia has 12 buttons. Then Mia buys 9 more buttons. How many buttons does Mia have now?",
        "12 + 9 = 21. The answer is 21.",
    ),
    (
        "Tom has 40 nuts. Then Tom gives 15 nuts to Kim. Then Kim gives Tom 7 nuts. How many nuts does Tom have now?",
        "40 - 15 = 25. 25 + 7 = 32. The answer is 32.",
    ),
    (
        "Zoe has 6 toys. Then the number of toys Zoe has is multiplied by 3. Then Zoe loses 5 toys. How many toys does Zoe have now?",
        "6 * 3 = 18. 18 - 5 = 13. The answer is 13.",
    ),
]


@dataclass(frozen=True)
class Knobs:
    # defaults where SmolLM2-135M-Instruct solves a fair share (5/16 greedy), so PTS finds problems with
    # p(success) in [0.2, 0.8]; at 2 steps, +-, operands <= 30 it solved 1/16 and PTS found no pairs
    steps: int = 1
    max_operand: int = 20
    ops: str = "+"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"arith steps must be >= 1, got {self.steps}")
        if self.max_operand < 2:
            raise ValueError(f"arith max_operand must be >= 2, got {self.max_operand}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"arith ops must be a non-empty mix of '+-*', got {self.ops!r}")


@dataclass(frozen=True)
class Problem:
    seed: int
    question: str
    answer: int
    work: str  # the worked solution, "12 + 9 = 21. The answer is 21."


def generate(seed: int, k: Knobs = Knobs()) -> Problem:
    rng = random.Random(f"arith:{k.steps}:{k.max_operand}:{k.ops}:{seed}")
    name, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    x = rng.randint(2, k.max_operand)
    text, work = [f"{name} has {x} {thing}."], []
    for _ in range(k.steps):
        op = rng.choice(k.ops)
        if op == "-" and x < 3:
            op = "+"  # nothing worth taking away (results stay >= 1, counts stay plural)
        if op == "+":
            b = rng.randint(2, k.max_operand)
            text.append(
                rng.choice([f"Then {name} buys {b} more {thing}.", f"Then {other} gives {name} {b} {thing}."])
            )
            work.append(f"{x} + {b} = {x + b}.")
            x += b
        elif op == "-":
            b = rng.randint(2, min(x - 1, k.max_operand))
            text.append(
                rng.choice([f"Then {name} gives {b} {thing} to {other}.", f"Then {name} loses {b} {thing}."])
            )
            work.append(f"{x} - {b} = {x - b}.")
            x -= b
        else:
            m = rng.randint(2, 4)
            text.append(f"Then the number of {thing} {name} has is multiplied by {m}.")
            work.append(f"{x} * {m} = {x * m}.")
            x *= m
    text.append(f"How many {thing} does {name} have now?")
    return Problem(seed, " ".join(text), x, " ".join(work) + f" The answer is {x}.")


@lru_cache(maxsize=8)
def _test_questions(k: Knobs) -> frozenset[str]:
    return frozenset(generate(s, k).question for s in TEST_SEEDS)


def split(name: str, n: int, k: Knobs = Knobs(), start: int = 0) -> list[Problem]:
    """Problems start..start+n-1 of the "train" or "test" split."""
    if name == "test":
        if start + n > len(TEST_SEEDS):
            raise ValueError(
                f"arith test split has {len(TEST_SEEDS)} problems; asked for {start}..{start + n}"
            )
        return [generate(s, k) for s in TEST_SEEDS[start : start + n]]
    if name != "train":
        raise ValueError(f"arith split must be 'train' or 'test', got {name!r}")
    held_out, out, seed = _test_questions(k), [], TRAIN_SEED0
    while len(out) < start + n:
        p = generate(seed, k)
        if p.question not in held_out:
            out.append(p)
        seed += 1
    return out[start:]


def load(data_dir, limit, shots) -> list[GenItem]:
    head = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in EXEMPLARS[:shots])
    return [
        GenItem(
            f"arith/{p.seed}",
            f"{head}Q: {p.question}\nA:",
            str(p.answer),
            stop=["Q:", "\n\n"],
            max_new_tokens=64,
        )
        for p in split("test", min(limit or len(TEST_SEEDS), len(TEST_SEEDS)))
    ]


def tasks() -> list[Task]:
    return [
        Task(
            "arith",
            "gen",
            3,
            "generated word problems (2 steps, operands <= 30, + and -), test seeds 0-999, greedy, final number",
            load,
            check=check,
        )
    ]
