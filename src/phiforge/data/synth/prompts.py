"""What the teacher is asked, and how its answers are read.

Prompts are written for the smallest teacher we run (SmolLM2-135M-Instruct): short, one worked example,
code asked for in a ```python fence. Parsing is lenient: a fence that was never closed, a bare `def` with no
fence, "Q:" for "Question:" all count; what cannot be read is counted in the funnel, never raised.

Each request draws an audience and a style (Cosmopedia's trick) from a generator seeded by the run seed and
the request number, so 10,000 requests on one topic list are not 10,000 copies of one text, and a re-run
draws the same ones (and hits the teacher's cache).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import asdict, dataclass

from ...teacher import Request

KINDS = ("textbook", "exercise", "qa")
AUDIENCES = (
    "a beginner who has just learned variables and loops",
    "a high school student",
    "a university student in a first programming course",
    "a self-taught programmer",
    "a data analyst who is new to Python",
    "an experienced developer new to Python",
)
STYLES = (
    "clear and friendly",
    "concise, like a reference manual",
    "step by step, like a tutorial",
    "Socratic, asking and answering questions",
    "practical, built around a small real-world task",
)

_EXAMPLE = '''```python
def count_vowels(text):
    """Return how many vowels (a, e, i, o, u) are in text, ignoring case."""
    return sum(1 for ch in text.lower() if ch in "aeiou")

assert count_vowels("Hello") == 2
assert count_vowels("") == 0
assert count_vowels("AEIOU") == 5
```'''

PROMPTS = {
    "textbook": (
        "Write a short textbook section about {topic} in Python for {audience}. Style: {style}.\n"
        "Explain the idea in a few sentences, then give one complete example in a ```python block that "
        "runs on its own and prints its result."
    ),
    "exercise": (
        "Write a Python exercise about {topic} for {audience}.\n"
        "Give one function with a docstring that says what it does, its solution, and at least two "
        "assert lines that test it, all in one ```python block. Use only the standard library.\n\n"
        "Example:\n" + _EXAMPLE
    ),
    "qa": (
        "Write one question that {audience} might ask about {topic} in Python, then answer it. "
        "Style: {style}.\nUse this format:\nQuestion: <the question>\n"
        "Answer: <the answer, with a ```python block if code helps>"
    ),
}
# the teacher sees its code and the error once; a small model follows "fix it" best with the code repeated
REVISE = (
    "This Python code has a problem.\n\n```python\n{code}\n```\n\nProblem: {error}\n\n"
    "Write the corrected code in one ```python block{tests}."
)
# an exercise answer starts here: a small model that would chat first writes code at once
PREFILL = {"exercise": "```python\ndef "}


@dataclass(frozen=True)
class Plan:
    """One synthesis request: what to ask, drawn deterministically from (seed, index)."""

    index: int
    kind: str
    topic: str
    audience: str
    style: str

    @property
    def id(self) -> str:
        return f"synth/{self.kind}/{self.index:06d}"

    def prompt(self) -> str:
        return PROMPTS[self.kind].format(**asdict(self))

    def request(self, **kw) -> Request:
        return Request(self.prompt(), prefill=PREFILL.get(self.kind, ""), **kw)


def plan(topics: list[str], n: int, kinds: tuple[str, ...] = KINDS, seed: int = 0) -> list[Plan]:
    """`n` requests: kinds in turn, topic/audience/style drawn per request from (seed, index)."""
    if not topics:
        raise ValueError("synth: no topics to write about")
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")  # a string seed: stable across Python versions and processes
        t, a, s = rng.choice(topics), rng.choice(AUDIENCES), rng.choice(STYLES)
        out.append(Plan(i, kinds[i % len(kinds)], t, a, s))
    return out


# ---- reading answers ----------------------------------------------------------------------------------

# a fenced block (```python, ```py or bare ```) up to its closing fence or the end of the answer
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_QA = re.compile(r"^\W*(?:question|q)\s*[:.]\s*(.+?)^\W*(?:answer|a)\s*[:.]\s*(.+)", re.S | re.I | re.M)


def code_blocks(text: str) -> list[str]:
    """Python code in an answer: its fenced blocks, or the whole answer when it is bare code."""
    blocks = [b.strip("\n") for b in _FENCE.findall(text) if b.strip()]
    if blocks:
        return blocks
    s = text.strip()
    return [s] if s.startswith(("def ", "import ", "from ", "class ")) and _parses(s) else []


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


@dataclass
class Exercise:
    code: str  # the function(s), docstring included
    tests: str  # the assert lines
    name: str  # the function under test


def read_exercise(text: str) -> Exercise | str:
    """Function + asserts from an answer, or why not (the funnel's reason, shown to the teacher on revision).

    Asserts may sit in the same block or another one; a block that does not parse is split by lines so
    the asserts are still found (the sandbox then reports the syntax error)."""
    code = "\n\n".join(code_blocks(text))
    if not code:
        return "no code block"
    lines = code.splitlines()
    tests = [ln for ln in lines if ln.startswith("assert ")]
    body = "\n".join(ln for ln in lines if not ln.startswith("assert ")).strip()
    name = re.search(r"^def\s+([A-Za-z_]\w*)\s*\(", body, re.M)
    if name is None:
        return "no function definition"
    if not tests:
        return f"no tests: add assert lines that call {name.group(1)}"
    return Exercise(body, "\n".join(tests), name.group(1))


def read_qa(text: str) -> tuple[str, str] | None:
    """(question, answer) from 'Question: ... Answer: ...' (Q:/A: too), else None."""
    m = _QA.search(text)
    if m is None:
        return None
    q, a = m.group(1).strip(), m.group(2).strip()
    return (q, a) if len(q) >= 10 and len(a) >= 20 else None
