"""`phiforge data synth`: a scripted teacher (an OpenAI-compatible stub, or a fake client object) drives
every path of the funnel: passing, failing then revised, looping forever, no code, garbage, teacher down."""

import gzip
import json
import re

import pytest

from phiforge.data import DataError
from phiforge.data.annotate import TeacherConfig
from phiforge.data.synth import SynthConfig, SynthSettings, synthesize
from phiforge.data.synth.prompts import Plan, code_blocks, plan, read_exercise, read_qa
from phiforge.data.synth.seeds import mine_topics, topics_of
from phiforge.data.synth.step import synth_batch
from phiforge.io import read_jsonl
from phiforge.teacher import Answer

GOOD = 'add_one(x):\n    """Return x plus one."""\n    return x + 1\n\nassert add_one(1) == 2\nassert add_one(-1) == 0\n```'
WRONG = 'double(x):\n    """Return twice x."""\n    return x + 2\n\nassert double(3) == 6\n```'
FIXED = '```python\ndef double(x):\n    """Return twice x."""\n    return 2 * x\n\nassert double(3) == 6\n```'
LOOP = 'spin(x):\n    """Never returns."""\n    while True:\n        x += 1\n\nassert spin(1) == 2\n```'
NO_TESTS = 'square(x):\n    """Return x squared."""\n    return x * x\n```'
TEXTBOOK = (
    "Lists hold items in order.\n\n```python\nitems = [3, 1, 2]\nprint(sorted(items))\n```\nThat is all."
)
QA = "Question: How do I reverse a list in Python?\nAnswer: Use slicing:\n```python\nprint([1, 2, 3][::-1])\n```"


def script(prompt: str) -> str:
    """The scripted teacher: the topic (or the code shown on revision) says what to answer."""
    if "has a problem" in prompt:  # a revision request
        if "def double" in prompt:
            return FIXED
        if "def square" in prompt or "def spin" in prompt:
            return "I cannot fix this."  # no code: the revision fails too
        return "```python\nprint('still broken'\n```"
    topic = re.search(r"about (topic-\w+)", prompt)
    topic = topic.group(1) if topic else ""
    if "exercise" in prompt:
        return {"topic-good": GOOD, "topic-wrong": WRONG, "topic-loop": LOOP, "topic-notests": NO_TESTS}.get(
            topic, "lorem ipsum"
        )
    if "textbook" in prompt:
        return (
            TEXTBOOK.replace("items", topic.replace("-", "_")) if topic != "topic-garbage" else "no code here"
        )
    return QA.replace("reverse", f"reverse ({topic})") if topic != "topic-garbage" else "just chatter"


@pytest.fixture
def stub(teacher_server):
    teacher_server.script = script
    return teacher_server


class FakeClient:
    """The client's interface (`ask`, `name`, `close`) with `script` behind it; counts what it was asked."""

    name = "scripted @ fake"

    def __init__(self):
        self.asked = []

    def ask(self, requests):
        self.asked += requests
        return [Answer([script(r.prompt)]) for r in requests]

    def close(self):
        pass


def _plans(*specs):
    return [Plan(i, kind, topic, "a student", "clear") for i, (kind, topic) in enumerate(specs)]


FAST = SynthSettings(timeout=2.0, sandbox_workers=2)


def test_parsers_are_lenient_and_say_why():
    assert code_blocks("```py\nx = 1\n") == ["x = 1"]  # an unclosed fence still counts
    assert code_blocks("def f():\n    return 1") == ["def f():\n    return 1"]  # bare code
    assert code_blocks("Sure! Here you go.") == []
    ex = read_exercise("```python\ndef " + GOOD)
    assert ex.name == "add_one" and ex.tests.count("assert") == 2
    assert read_exercise("```python\ndef " + NO_TESTS) == "no tests: add assert lines that call square"
    assert read_exercise("hello") == "no code block"
    assert read_qa("Q: What is a list in Python?\nA: An ordered, mutable sequence of items.")[0].startswith(
        "What"
    )
    assert read_qa("Question: hi\nAnswer: ok") is None  # too short to teach anything


def test_plan_draws_audience_and_style_per_request_and_is_reproducible():
    a, b = plan(["t1", "t2", "t3"], 30, seed=1), plan(["t1", "t2", "t3"], 30, seed=1)
    assert a == b and [p.kind for p in a[:3]] == ["textbook", "exercise", "qa"]
    assert len({(p.audience, p.style) for p in a}) > 5
    assert plan(["t1", "t2", "t3"], 30, seed=2) != a
    assert "a student" in _plans(("exercise", "x"))[0].prompt()


def test_batch_funnel_counts_pass_revise_loop_and_parse_failures():
    client = FakeClient()
    plans = _plans(("exercise", "topic-good"), ("exercise", "topic-wrong"), ("exercise", "topic-loop"),
                   ("exercise", "topic-notests"), ("exercise", "topic-junk"), ("textbook", "topic-x"),
                   ("textbook", "topic-garbage"), ("qa", "topic-y"), ("qa", "topic-garbage"))  # fmt: skip
    out = synth_batch(client, plans, FAST)
    c = out.counts
    assert (c["requested"], c["answered"]) == (9, 9)
    assert c["parsed"] == 5  # good, wrong, loop, textbook x, qa y; not no-tests, junk or garbage
    assert c["parsed/exercise"] == 3 and c["ran/exercise"] == 2  # the loop never finished
    assert c["passed"] == 3 and c["revised"] == 1  # add_one, textbook, qa; double fixed on revision
    kept = {cand.plan.topic: cand for cand in out.kept}
    assert set(kept) == {"topic-good", "topic-wrong", "topic-x", "topic-y"}
    assert kept["topic-wrong"].revised and "2 * x" in kept["topic-wrong"].text
    assert (
        out.dropped["timeout"] == 1
        and out.dropped["no tests"] == 1
        and out.dropped["no function definition"] == 1
    )
    assert out.dropped["no question/answer format"] == 1 and out.dropped["no code block"] == 1
    # the revision prompt showed the teacher its code and the error
    rev = [r.prompt for r in client.asked if "has a problem" in r.prompt]
    assert any("def double" in p and "AssertionError" in p for p in rev)
    assert any("never finishes" in p for p in rev)


def _seeds(tmp_path):
    d = tmp_path / "filtered"
    d.mkdir(exist_ok=True)
    docs = [{"id": f"d{i}", "text": f"import json\n\ndef parse_{i}(s):\n    return [x for x in json.loads(s)]\n",
             "metadata": {"quality": 4.0 - i / 10}} for i in range(5)]  # fmt: skip
    with gzip.open(d / "00000.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(x) + "\n" for x in docs)
    return d


def test_topics_are_mined_from_the_best_documents(tmp_path):
    assert "list comprehensions" in topics_of("y = [x for x in range(3)]")
    topics, best = mine_topics(_seeds(tmp_path), docs=3)
    assert [d.id for d in best] == ["d0", "d1", "d2"]
    assert set(topics[:2]) == {"list comprehensions", "the json module"}  # in all 3; each function in 1
    with pytest.raises(DataError, match="no such folder"):
        mine_topics(tmp_path / "missing")


def _cfg(tmp_path, url, **kw):
    topics = tmp_path / "topics.txt"
    topics.write_text("# scripted\ntopic-good\ntopic-wrong\ntopic-loop\ntopic-x\ntopic-y\ntopic-garbage\n")
    teacher = TeacherConfig(
        url=url, model="stub", max_retries=0, backoff=0.01, cache_path=str(tmp_path / "c.sqlite")
    )
    return SynthConfig(
        requests=12, topics_file=str(topics), settings=SynthSettings(timeout=2.0, teacher=teacher), **kw
    )


def test_synthesize_end_to_end_resumes_and_pays_nothing_twice(tmp_path, stub):
    src, out = _seeds(tmp_path), tmp_path / "synth"
    r = synthesize(src, out, _cfg(tmp_path, stub.url))
    f = r["funnel"]
    assert f["requested"] == 12 and f["kept"] == r["docs_out"] > 0
    assert f["passed"] + f["revised"] >= f["deduplicated"] >= f["kept"]
    assert r["dropped"]["duplicate within"] > 0  # the scripted teacher repeats itself per topic
    rows = list(read_jsonl(out / "00000.jsonl.gz"))
    meta = rows[0]["metadata"]
    assert {"kind", "topic", "audience", "style", "teacher", "verified", "revised"} <= set(meta)
    assert meta["teacher"] == f"stub @ {stub.url}"
    assert json.loads((out / "funnel.json").read_text())["funnel"] == f
    assert set(r["per_kind"]) == {"exercise", "textbook", "qa"}  # "no question/answer format" is a reason
    assert sum(k["requested"] for k in r["per_kind"].values()) == 12
    card = (out / "card.md").read_text()
    assert (
        "| requested | 12 |" in card and "distinct 1/2/3-grams" in card and (out / "card.png").stat().st_size
    )
    asked = len(stub.log)
    assert synthesize(src, out, _cfg(tmp_path, stub.url)) == r  # done: skipped
    (out / "_stage.json").unlink()  # a killed run: no marker; the cache answers everything
    assert synthesize(src, out, _cfg(tmp_path, stub.url))["funnel"] == f
    assert len(stub.log) == asked


def test_teacher_down_is_counted_not_fatal(tmp_path, stub):
    stub.status = 500
    r = synthesize(_seeds(tmp_path), tmp_path / "synth", _cfg(tmp_path, stub.url))
    assert r["funnel"]["requested"] == 12 and r["funnel"]["answered"] == 0 and r["docs_out"] == 0
    assert r["dropped"]["teacher error"] == 12
    assert not (tmp_path / "synth" / "_stage.json").exists()  # not done: the next run asks again
    stub.status = None  # the teacher is back
    r = synthesize(_seeds(tmp_path), tmp_path / "synth", _cfg(tmp_path, stub.url))
    assert r["funnel"]["answered"] == 12 and r["docs_out"] > 0 and "teacher error" not in r["dropped"]


def test_bad_input_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="kinds"):
        SynthConfig(kinds=("poem",))
    (tmp_path / "t.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="no topics"):
        synthesize(_seeds(tmp_path), tmp_path / "o", SynthConfig(topics_file=str(tmp_path / "t.txt"),
                   settings=SynthSettings(teacher=TeacherConfig(url="http://127.0.0.1:9/v1"))))  # fmt: skip
    with pytest.raises(DataError, match="give a teacher"):
        synthesize(_seeds(tmp_path), tmp_path / "o", SynthConfig())


def test_executors_build_or_say_what_is_missing(tmp_path):
    from phiforge.data.stage import make_executor

    assert type(make_executor("local", [], 2, 2, tmp_path)).__name__ == "LocalPipelineExecutor"
    with pytest.raises(ValueError, match="partition and time"):
        make_executor("slurm", [], 2, 2, tmp_path)
    ex = make_executor("slurm", [], 2, 2, tmp_path, {"partition": "cpu", "time": "1:00:00"})
    assert type(ex).__name__ == "SlurmPipelineExecutor"
    try:
        import ray  # noqa: F401

        assert type(make_executor("ray", [], 2, 2, tmp_path)).__name__ == "RayPipelineExecutor"
    except ImportError:
        with pytest.raises(ValueError, match=r"ray.*pip install 'datatrove\[ray\]'"):
            make_executor("ray", [], 2, 2, tmp_path)
    with pytest.raises(ValueError, match="expected one of local, slurm, ray"):
        make_executor("k8s", [], 2, 2, tmp_path)


@pytest.mark.slow
def test_real_teacher_in_process(tmp_path):
    """SmolLM2-135M-Instruct writes 3 requests; whatever it writes, the funnel adds up and nothing crashes."""
    from phiforge.infer.load import resolve
    from phiforge.model import CheckpointError

    try:
        resolve("smollm2-135m-instruct")
    except CheckpointError as e:
        pytest.skip(str(e))
    topics = tmp_path / "topics.txt"
    topics.write_text("string reversal\n")
    cfg = SynthConfig(requests=3, topics_file=str(topics), settings=SynthSettings(
        max_tokens=160, teacher=TeacherConfig(local="smollm2-135m-instruct")))  # fmt: skip
    r = synthesize(_seeds(tmp_path), tmp_path / "synth", cfg)
    f = r["funnel"]
    assert f["requested"] == f["answered"] == 3
    assert f["passed"] + f["revised"] >= f["deduplicated"] >= f["kept"] == r["docs_out"]
    assert (
        "smollm2-135m-instruct @ in-process" in (tmp_path / "synth" / "card.md").read_text()
        or not r["docs_out"]
    )


def test_cli_synth_and_executor_errors(tmp_path, stub, phiforge, one_line_error):
    src = _seeds(tmp_path)
    (tmp_path / "t.txt").write_text("topic-good\ntopic-x\ntopic-y\n")
    r = phiforge("data", "synth", src, tmp_path / "out", "--teacher-url", stub.url, "--teacher-model", "stub",
                 "--requests", "6", "--topics", tmp_path / "t.txt")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["funnel"]["requested"] == 6 and "6/6 requests" in r.stderr
    r = phiforge("data", "synth", src, tmp_path / "o2", "--teacher-url", stub.url, "--executor", "slurm")
    one_line_error(r, "--executor slurm: give partition and time")
    r = phiforge("data", "synth", src, tmp_path / "o2", "--teacher-url", stub.url, "--executor", "k8s")
    one_line_error(r, "--executor 'k8s': expected one of local, slurm, ray")
