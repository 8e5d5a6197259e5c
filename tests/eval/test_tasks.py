"""Task loaders on the real benchmark files (counts, prompt formats), answer extraction, bad input."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from phiforge.eval.tasks import DataError, GenItem, bbh, code, gsm8k, mc, registry, sanity
from phiforge.sandbox import Limits, run_many


@pytest.mark.parametrize(
    "text, want",
    [
        ("She has 5 + 3 = 8 apples. The answer is 8.", "8"),
        ("The answer is 1,234.", "1234"),
        ("So the total is $18. The answer is $18.", "18"),
        ("The answer is -7.", "-7"),
        ("The answer is 3.50.", "3.5"),
        ("He pays 2 * 12 = 24 dollars.", "24"),  # no 'The answer is': last number
        ("The answer is 10. Q: next question has 99", "10"),
        ("First 5, then 6.\nQ: Another question with 7?", "6"),  # text after a new 'Q:' is ignored
        ("the final answer is: 42", "42"),
        ("There are .5 liters", "0.5"),
        ("The answer is 0.", "0"),
    ],
)
def test_gsm8k_final_number_extraction(text, want):
    ans, _ = gsm8k.extract_answer(text)
    assert gsm8k.to_number(ans) == gsm8k.to_number(want)


def test_gsm8k_check_and_no_number():
    it = GenItem("x", "", "1,234")
    assert gsm8k.check(it, "The answer is 1234.")["correct"]
    assert not gsm8k.check(it, "The answer is 1235.")["correct"]
    r = gsm8k.check(it, "I do not know.")
    assert not r["correct"] and r["extracted"] is None
    assert gsm8k.gold_answer("3 + 4 = 7\n#### 7") == "7"


def test_bbh_extraction():
    assert bbh.extract("Step... So the answer is (B).") == "(B)"
    assert bbh.extract("x So the answer is True.\n\nQ: more") == "True"
    assert bbh.extract("The answer is valid. Then the answer is invalid.") == "invalid"
    assert bbh.check(GenItem("i", "", "False"), "... So the answer is False.")["correct"]


def test_registry_has_every_phi_benchmark():
    want = "humaneval mbpp gsm8k mmlu arc_easy arc_challenge hellaswag truthfulqa_mc1 truthfulqa_mc2 bbh piqa winogrande sanity"
    reg = registry()
    assert set(want.split()) <= set(reg)
    shots = {n: reg[n].shots for n in want.split()}
    assert shots["mmlu"] == 5 and shots["gsm8k"] == 8 and shots["bbh"] == 3 and shots["mbpp"] == 3
    assert shots["humaneval"] == 0 and shots["hellaswag"] == 5 and shots["arc_challenge"] == 10


@pytest.mark.parametrize(
    "name, n",
    [
        ("humaneval", 164),
        ("gsm8k", 1319),
        ("mmlu", 14042),
        ("arc_easy", 2376),
        ("hellaswag", 10042),
        ("piqa", 1838),
        ("winogrande", 1267),
        ("truthfulqa_mc1", 817),
        ("truthfulqa_mc2", 817),
        ("bbh", 6511),
        ("sanity", 11),
    ],
)
def test_loaders_read_every_record(bench, name, n):
    t = registry()[name]
    items = t.load(bench, None, t.shots)
    assert len(items) == n
    if t.kind in ("mc", "mc2"):
        assert all(len(it.pairs) >= 2 and len(it.pairs) == len(it.norm) for it in items[:50])


def test_prompt_formats(bench):
    it = mc.load_mmlu(bench, 1, 5)[0]  # abstract_algebra, 5 dev shots
    ctx = it.pairs[0][0]
    assert ctx.startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )
    assert ctx.count("\nAnswer:") == 6 and ctx.endswith("\nD. 6\nAnswer:")
    assert [p[1] for p in it.pairs] == [" A", " B", " C", " D"]
    g = gsm8k.load(bench, 1, 8)[0]
    assert g.prompt.count("Q: ") == 9 and g.prompt.endswith("\nA:") and "The answer is 6." in g.prompt
    b = bbh.load(bench, 1, 3)[0]
    assert (
        "canary" not in b.prompt
        and b.prompt.count("\n\nQ: ") == 4
        and b.prompt.endswith("Let's think step by step.")
    )
    a = mc.load_arc("arc_easy")(bench, 3, 10)[2]
    assert a.pairs[0][0].count("Question: ") == 11  # 10 shots + the question, never itself
    assert a.pairs[0][0].endswith("\nAnswer:") and a.pairs[0][1].startswith(" ")
    w = mc.load_winogrande(bench, 1, 0)[0]
    assert w.pairs[0][1] == w.pairs[1][1] and w.pairs[0][0] != w.pairs[1][0]  # partial scoring
    t = mc.load_truthfulqa("mc2")(bench, 1, 0)[0]
    assert t.pairs[0][0].startswith("Q: What is human life expectancy") and sum(t.labels) >= 1


def test_arc_answer_key_maps_through_labels(tmp_path):
    q = {"stem": "Pick", "choices": [{"text": t, "label": str(i + 1)} for i, t in enumerate("wxyz")]}
    write_jsonl(tmp_path / "arc_easy" / "test.jsonl", [{"question": q, "answerKey": "3"}])
    it = mc.load_arc("arc_easy")(tmp_path, None, 0)[0]
    assert it.gold == 2 and it.pairs[2][1] == " y"


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"GSM8K file not found: .*gsm8k/test.jsonl"):
        gsm8k.load(tmp_path, None, 8)
    p = tmp_path / "gsm8k" / "test.jsonl"
    p.parent.mkdir()
    p.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n')
    with pytest.raises(DataError, match=r"test.jsonl:2: not valid JSON"):
        gsm8k.load(tmp_path, None, 8)
    p.write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match=r"record 1: missing field 'answer'"):
        gsm8k.load(tmp_path, None, 8)
    with pytest.raises(DataError, match="MBPP file not found"):
        code.load_mbpp(tmp_path, None, 3)
    with pytest.raises(DataError, match="no --data folder"):
        mc.load_piqa(None, None, 0)


MBPP_ROWS = [
    {
        "task_id": 2,
        "text": "Write a function to find the shared elements of two lists.",
        "code": "def similar_elements(a, b):\r\n  return tuple(set(a) & set(b))",
        "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == {4, 5}"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    return n < 2 or any(n % i == 0 for i in range(2, int(math.sqrt(n)) + 1))",
        "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a list using heap queue.",
        "code": "import heapq\r\ndef heap_queue_largest(nums, n):\r\n  return heapq.nlargest(n, nums)",
        "test_list": ["assert heap_queue_largest([25, 35, 22, 85], 2) == [85, 35]"],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character.",
        "code": "def remove_Occ(s, ch):\r\n    i = s.find(ch)\r\n    if i >= 0:\r\n        s = s[:i] + s[i + 1:]\r\n    j = s.rfind(ch)\r\n    if j >= 0:\r\n        s = s[:j] + s[j + 1:]\r\n    return s",
        "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 12,
        "text": "Write a function to add a constant.",
        "code": "def add_k(x):\r\n    return x + K",
        "test_list": ["assert add_k(1) == 11"],
        "test_setup_code": "K = 10",
        "challenge_test_list": [],
    },
]


def test_mbpp_standard_file_prompts_and_reference_code(tmp_path):
    write_jsonl(tmp_path / "mbpp" / "mbpp.jsonl", MBPP_ROWS)
    items = code.load_mbpp(tmp_path, None, 3)
    assert [it.id for it in items] == ["mbpp/11", "mbpp/12"]
    assert items[0].prompt.count("[BEGIN]") == 4 and items[0].prompt.count("[DONE]") == 3
    assert items[0].prompt.endswith('assert remove_Occ("abcda","a") == "bcd"\n[BEGIN]\n')
    progs = [code.mbpp_program(it, it.meta["code"]) for it in items]
    progs.append(code.mbpp_program(items[0], "def remove_Occ(s, ch):\n    return s"))
    res = run_many(progs, Limits(timeout=10), workers=2)
    assert [r.status for r in res] == ["passed", "passed", "failed"]


def test_sanity_checks_right_and_wrong_answers():
    items = {it.id.split("/")[1]: it for it in sanity.load(None, None, 0)}
    assert len(items) >= 10
    ok = {
        "drying_shirts": " It still takes 1 hour, they dry in parallel.",
        "killers_in_a_room": " There are 3 killers: two of the original ones and the newcomer.",
        "transitive_speed": " No, Alice is faster than Carol.",
        "sallys_sisters": " Sally has one sister.",
        "bat_and_ball": " The ball costs 5 cents.",
        "lily_pads": " 47 days.",
        "widgets": " 5 minutes.",
        "days_after_friday": " Sunday.",
    }
    bad = {
        "drying_shirts": " 6 hours.",
        "transitive_speed": " Yes.",
        "sallys_sisters": " 2 sisters",
        "bat_and_ball": " 10 cents",
        "lily_pads": " 24 days",
    }
    for k, text in ok.items():
        assert sanity.check(items[k], text)["correct"], k
    for k, text in bad.items():
        assert not sanity.check(items[k], text)["correct"], k
    sol = "    s = [c.lower() for c in s if c.isalnum()]\n    return s == s[::-1]\n"
    assert sanity.check(items["is_palindrome"], sol)["correct"]
    assert not sanity.check(items["is_palindrome"], "    return True\n")["correct"]
    fb = "    return ['FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else 'Buzz' if i % 5 == 0 else str(i) for i in range(1, n + 1)]\n"
    assert sanity.check(items["fizzbuzz"], fb)["correct"]
    sl = "    u = sorted(set(xs))\n    return u[-2] if len(u) > 1 else None\n"
    assert sanity.check(items["second_largest"], sl)["correct"]


def test_humaneval_defaults_to_the_packaged_file():
    items = code.load_humaneval(None, 3, 0)
    assert items[0].id == "HumanEval/0" and items[0].stop == code.HUMANEVAL_STOP
    json.dumps([it.meta for it in items])  # serializable for reports
