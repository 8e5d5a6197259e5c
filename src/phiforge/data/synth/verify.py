"""Verification by execution: what each answer must run, one self-revision round, the documents kept.

    answer -> candidate (program + document) -> sandbox -> passed: keep
                                                        -> failed: the teacher sees its code and the error
                                                                   once; the revised program must pass

An exercise runs its function with its asserts; a textbook section runs its code blocks as one program; a
Q/A pair runs the code in its answer (one without code has nothing to verify and is kept unverified).
Every outcome is a reason string the funnel counts; nothing here raises on a bad answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...sandbox import Limits, run_many
from ...teacher import Request
from .prompts import PREFILL, REVISE, Exercise, Plan, code_blocks, read_exercise, read_qa

# the funnel, in order; `revised` adds back what the revision round healed (verified = passed + revised)
FUNNEL = ("requested", "answered", "parsed", "ran", "passed", "revised", "deduplicated", "kept")


@dataclass
class Candidate:
    plan: Plan
    text: str  # the document as it would be kept
    program: str | None  # what must run (None: nothing to verify)
    exercise: Exercise | None = None
    revised: bool = False


@dataclass
class Outcome:
    counts: Counter = field(default_factory=Counter)  # funnel stages reached, per kind too ("ran/exercise")
    dropped: Counter = field(default_factory=Counter)  # why, e.g. "no tests", "timeout", "teacher error"
    kept: list[Candidate] = field(default_factory=list)

    def count(self, stage: str, kind: str) -> None:
        self.counts[stage] += 1
        self.counts[f"{stage}/{kind}"] += 1


def candidate(plan: Plan, answer: str) -> Candidate | str:
    """What an answer must run and would keep, or why it cannot be read (a funnel reason)."""
    answer = PREFILL.get(plan.kind, "") + answer
    if plan.kind == "exercise":
        ex = read_exercise(answer)
        if isinstance(ex, str):
            return ex
        return Candidate(plan, f"{ex.code}\n\n{ex.tests}\n", f"{ex.code}\n\n{ex.tests}\n", ex)
    if plan.kind == "qa":
        qa = read_qa(answer)
        if qa is None:
            return "no question/answer format"
        blocks = code_blocks(qa[1])
        return Candidate(plan, f"Question: {qa[0]}\nAnswer: {qa[1]}", "\n\n".join(blocks) or None)
    blocks = code_blocks(answer)
    if not blocks:
        return "no code block"
    return Candidate(
        plan, f"# {plan.topic[:1].upper()}{plan.topic[1:]}\n\n{answer.strip()}", "\n\n".join(blocks)
    )


def revise_request(c: Candidate | None, plan: Plan, answer: str, error: str, **kw) -> Request:
    """The revision prompt: the code (or the whole answer when no code could be read) and the problem."""
    code = c.program if c is not None and c.program else (PREFILL.get(plan.kind, "") + answer).strip()
    tests = " with the function and its assert lines" if plan.kind == "exercise" else ""
    return Request(REVISE.format(code=code[:3000], error=error, tests=tests), **kw)


def revised(c: Candidate | None, plan: Plan, answer: str) -> Candidate | str:
    """The candidate after revision: the new code in place of the old (exercise asserts kept if dropped)."""
    blocks = code_blocks(answer)
    if not blocks:
        return "no code block after revision"
    code = "\n\n".join(blocks)
    if plan.kind == "exercise":
        old_tests = c.exercise.tests if c is not None and c.exercise else ""
        ex = read_exercise(f"```python\n{code}\n{old_tests if 'assert ' not in code else ''}\n```")
        if isinstance(ex, str):
            return ex
        return Candidate(plan, f"{ex.code}\n\n{ex.tests}\n", f"{ex.code}\n\n{ex.tests}\n", ex, revised=True)
    return Candidate(plan, _replace_code(c.text, code), code, revised=True)


def _replace_code(text: str, code: str) -> str:
    """The document with its first code block replaced by `code` and any other block removed."""
    first = text.find("```")
    last = text.rfind("```")
    if first < 0:  # a Q/A pair whose code was bare: append the fix
        return f"{text.rstrip()}\n\n```python\n{code}\n```"
    end = last + 3 if last > first else len(text)
    return f"{text[:first]}```python\n{code}\n```{text[end:]}"


def run_programs(cands: list[Candidate], limits: Limits, workers: int) -> list[tuple[str, str]]:
    """(status, detail) per candidate; one without a program passes (nothing to run)."""
    todo = [i for i, c in enumerate(cands) if c.program]
    res = run_many([cands[i].program for i in todo], limits, workers=workers) if todo else []
    out = [("passed", "")] * len(cands)
    for i, r in zip(todo, res, strict=True):
        out[i] = (r.status, r.detail)
    return out


def problem(status: str, detail: str) -> str:
    """The error as the teacher is shown it: one line."""
    if status == "timeout":
        return "it never finishes (an infinite loop?)"
    if status == "memory":
        return "it uses too much memory"
    return detail or status


def reason(status: str, detail: str) -> str:
    """A sandbox failure as a funnel reason: timeout, memory, or the exception's name (AssertionError...)."""
    if status in ("timeout", "memory"):
        return status
    name = detail.split(":")[0].strip()
    return name if name.isidentifier() else status
