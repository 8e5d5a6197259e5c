"""The generated arithmetic task: determinism, disjoint splits, the knobs, exact answers, the harness entry."""

from __future__ import annotations

import re

import pytest

from phiforge.eval.tasks import arith, registry


def test_same_seed_same_problem_and_stable_text():
    assert arith.split("train", 20) == arith.split("train", 20)
    assert arith.generate(7) == arith.generate(7) != arith.generate(8)
    # fixed across Python runs and machines (string seeds hash with sha512): held-out sets stay held out
    assert arith.generate(0, arith.Knobs(2, 30, "+-")).question == (
        "Dan has 16 coins. Then Dan loses 12 coins. Then Dan buys 26 more coins. "
        "How many coins does Dan have now?"
    )
    assert arith.generate(0).question == (  # the defaults: one step, +, operands <= 20
        "Hugo has 7 stamps. Then Hugo buys 13 more stamps. How many stamps does Hugo have now?"
    )
    assert arith.split("train", 5, start=3) == arith.split("train", 8)[3:]


def test_train_and_test_are_disjoint():
    test = arith.split("test", len(arith.TEST_SEEDS))
    train = arith.split("train", 3000)
    assert {p.seed for p in test} == set(arith.TEST_SEEDS)
    assert min(p.seed for p in train) >= arith.TRAIN_SEED0 > max(arith.TEST_SEEDS)
    assert not {p.question for p in test} & {p.question for p in train}
    # one step on small numbers collides often: the train split skips those questions
    easy = arith.Knobs(steps=1, max_operand=5)
    held = {p.question for p in arith.split("test", 1000, easy)}
    assert not held & {p.question for p in arith.split("train", 50, easy)}


@pytest.mark.parametrize("knobs", [arith.Knobs(), arith.Knobs(4, 99, "+-*"), arith.Knobs(1, 3, "-")])
def test_answers_are_exact_and_knobs_apply(knobs):
    for p in arith.split("train", 200, knobs):
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", p.work)
        assert len(steps) == knobs.steps == p.question.count("Then ")
        x = int(steps[0][0])
        assert f"has {x} " in p.question
        for a, op, b, c in steps:
            assert int(a) == x and (op in knobs.ops or (op == "+" and "-" in knobs.ops))
            x = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert int(c) == x and (op == "*" or 2 <= int(b) <= knobs.max_operand)
        assert x == p.answer >= 1 and p.work.endswith(f"The answer is {x}.")


def test_bad_knobs_and_splits():
    with pytest.raises(ValueError, match="steps"):
        arith.Knobs(steps=0)
    with pytest.raises(ValueError, match="ops"):
        arith.Knobs(ops="+/")
    with pytest.raises(ValueError, match="split"):
        arith.split("dev", 3)
    with pytest.raises(ValueError, match="test split has 1000"):
        arith.split("test", 10, start=995)


def test_registered_in_the_harness_and_checked_exactly():
    task = registry()["arith"]
    items = task.load(None, 5, task.shots)
    assert [it.id for it in items] == [f"arith/{s}" for s in range(5)]
    it, p = items[0], arith.generate(0)
    assert it.prompt.endswith(f"Q: {p.question}\nA:") and it.prompt.count("Q: ") == 4
    assert task.check(it, " " + p.work)["correct"]
    assert task.check(it, f" The answer is {p.answer}.\n")["correct"]
    assert not task.check(it, f" The answer is {p.answer + 1}.")["correct"]
    assert len(task.load(None, None, 0)) == len(arith.TEST_SEEDS)
