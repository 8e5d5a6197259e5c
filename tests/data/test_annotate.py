"""Teacher annotation: answer parsing, the heuristic annotator, and the LLM client against a real local HTTP
server that can be slow, flaky, down, or refuse us; plus the datatrove step under LocalPipelineExecutor."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import re
import sysconfig
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from phiforge.data import DataError
from phiforge.data.annotate import (
    CODE_PROMPT,
    PROSE_PROMPT,
    AnnotateStep,
    Annotation,
    HeuristicAnnotator,
    ResponseCache,
    TeacherAnnotator,
    TeacherConfig,
    TeacherUnavailable,
    build_prompt,
    make_annotator,
    parse_answer,
)

# --------------------------------------------------------------------------------------------------------------
# a scripted OpenAI-compatible server


class FakeTeacher:
    """POST /v1/chat/completions on 127.0.0.1. The answer is read from the prompt: a document containing
    SCORE=<n> gets "Score: <n>", one containing MALFORMED gets chatter with no score, anything else 3.

    Scripting: `failures` are statuses returned (in order) before answering normally; `status` is returned for
    every request (the endpoint is down); `ok_budget` answers that many requests, then 503s; `delay` sleeps
    before answering; `raw` replaces the answer with any body (a url that is not an OpenAI endpoint).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[tuple[str, int]] = []  # (prompt, status answered)
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.failures: list[int] = []
        self.status: int | None = None
        self.ok_budget: int | None = None
        self.delay = 0.0
        self.raw: tuple[str, bytes] | None = None  # (content type, body) sent with a 200 instead of an answer
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    @property
    def prompts(self) -> list[str]:
        return [p for p, _ in self.log]

    def decide(self, prompt: str, auth: str) -> int:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.status is not None:
                status = self.status
            elif self.failures:
                status = self.failures.pop(0)
            elif self.ok_budget is not None:
                status = 200 if self.ok_budget > 0 else 503
                self.ok_budget -= status == 200
            else:
                status = 200
            self.log.append((prompt, status))
            self.auth.append(auth)
            return status

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer_for(prompt: str) -> str:
    if "MALFORMED" in prompt:
        return "What a lovely piece of work, I enjoyed reading it!"
    m = re.search(r"SCORE=(\d)", prompt)
    return f"Score: {m.group(1) if m else 3}\nReason: scripted answer"


def _handler(fake: FakeTeacher):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            status = fake.decide(prompt, self.headers.get("Authorization", ""))
            time.sleep(fake.delay)
            fake.done()  # before replying: the client's next request must not overlap this one's count
            if status == 200:
                payload = {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer_for(prompt)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            else:
                payload = {"error": {"message": f"scripted {status}", "type": "test"}}
            ctype, out = fake.raw or ("application/json", json.dumps(payload).encode())
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except OSError:  # the client timed out and hung up
                pass

    return Handler


@pytest.fixture
def fake():
    f = FakeTeacher()
    yield f
    f.close()


def cfg_for(fake: FakeTeacher, tmp_path: Path, **kw) -> TeacherConfig:
    base = dict(
        url=fake.url, model="test-model", backoff=0.01, timeout=5.0, cache_path=str(tmp_path / "cache.sqlite")
    )
    return TeacherConfig(**(base | kw))


# --------------------------------------------------------------------------------------------------------------
# prompts and parsing


def test_build_prompt_fills_truncates_and_checks_kind():
    p = build_prompt("def add(a, b):\n    return a + b\n", "code")
    assert "def add(a, b):" in p and "student learning to program" in p
    assert "additive" in build_prompt("Photosynthesis turns light into sugar.", "prose")
    for template in (CODE_PROMPT, PROSE_PROMPT):
        assert "{text}" in template and "Score:" in template and "Reason:" in template
    long = build_prompt("x" * 10_000, "code", max_chars=100)
    assert "x" * 100 in long and "x" * 101 not in long and "truncated" in long
    with pytest.raises(DataError, match="kind"):
        build_prompt("text", "poetry")


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Score: 4\nReason: clear and documented", Annotation(4, "clear and documented")),
        ("**Score:** 4/5\n**Reason:** nice examples", Annotation(4, "nice examples")),
        ('```json\n{"score": 2, "reason": "mostly glue"}\n```', Annotation(2, "mostly glue")),
        ('{"Score": "5", "Reason": "textbook"}', Annotation(5, "textbook")),
        ("Educational score: 3\nReason: ok", Annotation(3, "ok")),
        ("Score (0-5): 1\nReason: boilerplate", Annotation(1, "boilerplate")),
        ("Reason: comes first\nScore: 0", Annotation(0, "comes first")),
        ("Score: 4\nReason: a 5 would need exercises\nScore: 4", Annotation(4, "a 5 would need exercises")),
        ("  5  ", Annotation(5, "")),
        ("Score: 3.5\nReason: between", None),  # non-integer: malformed, not rounded
        ('{"score": 3.5}', None),
        ("Score: 6\nReason: amazing", None),
        ("Score: -1", None),
        ("Score: 8/10", None),  # another scale
        ("Score: 4\nScore: 2", None),  # conflicting
        ('{"score": 4}\nScore: 1', None),
        ('{"score": true}', None),
        ("Score: <0-5>\nReason: <one line>", None),  # the template echoed back
        ("I enjoyed reading this code very much.", None),
        ("", None),
    ],
)
def test_parse_answer(answer, expected):
    assert parse_answer(answer) == expected


def test_parse_answer_never_raises():
    rng = random.Random(0)
    alphabet = 'Score:reason{}[]"0123456789./*\n -'
    for _ in range(2000):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        ann = parse_answer(junk)
        assert ann is None or 0 <= ann.score <= 5
    for junk in (
        None,
        42,
        b"Score: 4",
        "{" * 5000 + "}" * 5000,
        '{"score": ' + "9" * 5000 + "}",
        "Score: " + "9" * 5000,
    ):
        assert parse_answer(junk) is None


# --------------------------------------------------------------------------------------------------------------
# heuristic annotator

GOOD = '''
def binary_search(sorted_items, target):
    """Return the index of `target` in `sorted_items`, or -1 if it is absent.

    Each step halves the range that can still hold the target, so the search takes O(log n) comparisons.
    """
    low, high = 0, len(sorted_items) - 1
    while low <= high:
        middle = (low + high) // 2
        # the target can only be in the half whose bounds still enclose it
        if sorted_items[middle] == target:
            return middle
        if sorted_items[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1
'''

PROTOBUF = """# -*- coding: utf-8 -*-
# Generated by the protocol buffer compiler.  DO NOT EDIT!
# source: user.proto
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pool as _descriptor_pool
from google.protobuf import symbol_database as _symbol_database
_sym_db = _symbol_database.Default()
DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(b'\\n\\nuser.proto\\x12\\x04user')
_USER = DESCRIPTOR.message_types_by_name['User']
User = _reflection.GeneratedProtocolMessageType('User', (_message.Message,), {'DESCRIPTOR': _USER})
_sym_db.RegisterMessage(User)
"""

TESTS = """
import pytest
from shop.cart import Cart


def test_empty_cart_total():
    assert Cart().total() == 0


def test_add_item():
    c = Cart()
    c.add("apple", 2)
    assert c.total() == 2
    assert len(c) == 1


def test_remove_missing():
    with pytest.raises(KeyError):
        Cart().remove("pear")


def test_discount():
    c = Cart()
    c.add("apple", 10)
    assert c.total(discount=0.5) == 5
"""

TABLE = (
    "PRIMES = [\n" + "".join(f"    {p},\n" for p in range(2, 400) if all(p % d for d in range(2, p))) + "]\n"
)


def test_heuristic_prefers_instructive_code():
    good = HeuristicAnnotator().annotate([GOOD], ["code"])[0]
    assert good.score >= 4, good
    bad = {
        "protobuf": PROTOBUF,
        "tests": TESTS,
        "syntax error": "def broken(:\n    return 1\n",
        "one line": "print('hello')\n",
        "data table": TABLE,
    }
    results = HeuristicAnnotator().annotate(list(bad.values()), ["code"] * len(bad))
    scored = dict(zip(bad, results, strict=True))
    for name, ann in scored.items():
        assert 0 <= ann.score < good.score, (name, ann)
        assert ann.reason and "\n" not in ann.reason
    assert scored["protobuf"].score == 0 and "generated" in scored["protobuf"].reason
    assert "test file" in scored["tests"].reason
    assert scored["syntax error"].score == 0 and "syntax error" in scored["syntax error"].reason
    assert "data literals" in scored["data table"].reason


def test_heuristic_is_deterministic_and_checks_its_input():
    texts = [GOOD, TESTS, "The mitochondria is the powerhouse of the cell. " * 20]
    kinds = ["code", "code", "prose"]
    assert HeuristicAnnotator().annotate(texts, kinds) == HeuristicAnnotator().annotate(texts, kinds)
    with pytest.raises(DataError, match="kind"):
        HeuristicAnnotator().annotate(["x"], ["poem"])
    with pytest.raises(DataError, match="texts"):
        HeuristicAnnotator().annotate(["x", "y"], ["code"])
    assert make_annotator(TeacherConfig()).name == "heuristic-v1"


def test_heuristic_prose_prefers_explanations_over_boilerplate():
    lesson = (
        "Plants make their own food through a process called photosynthesis. Because leaves contain chlorophyll, "
        "they can absorb sunlight and use its energy to turn water and carbon dioxide into sugar. For example, "
        "a sunflower follows the sun during the day, which means its leaves collect more light. The oxygen we "
        "breathe is a result of this process, so forests are important for life on Earth. In the next step, the "
        "sugar is carried to the roots and stored as starch, which the plant uses when it cannot make food. "
    ) * 2
    menu = "Home\nAbout us\nContact\nLogin\n" * 15
    digits = "ID 48213 9921 0032 48 1 77 | 99 0 12 | 3419 882 1 | 77 1 2 3 " * 10
    good, *bad = HeuristicAnnotator().annotate([lesson, menu, digits, "Buy now!"], ["prose"] * 4)
    assert good.score >= 4, good
    assert all(b.score < good.score for b in bad), bad


def test_heuristic_spreads_over_real_stdlib_files():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.stat().st_size < 20_000
    )
    files = files[:: max(1, len(files) // 200)][:200]
    assert len(files) >= 150
    texts = [p.read_text(errors="replace") for p in files]
    scores = [a.score for a in HeuristicAnnotator().annotate(texts, ["code"] * len(texts))]
    assert all(0 <= s <= 5 for s in scores)
    assert len(set(scores)) >= 3, sorted(scores)


# --------------------------------------------------------------------------------------------------------------
# response cache


def test_response_cache_persists_and_is_thread_safe(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    cache = ResponseCache(path)
    assert cache.get("m", "p") is None and len(cache) == 0

    def put_many(start):
        for i in range(start, start + 10):
            cache.put("m", f"prompt {i}", f"answer {i}")

    threads = [threading.Thread(target=put_many, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 40
    cache.put("other-model", "prompt 1", "different")  # the model is part of the key
    cache.close()
    again = ResponseCache(path)
    assert len(again) == 41
    assert again.get("m", "prompt 1") == "answer 1" and again.get("other-model", "prompt 1") == "different"
    (tmp_path / "not-sqlite").write_text("hello, I am a text file, not a database\n" * 100)
    with pytest.raises(DataError, match="not-sqlite"):
        ResponseCache(tmp_path / "not-sqlite")


# --------------------------------------------------------------------------------------------------------------
# teacher client against the fake server


def docs(n: int, prefix: str = "doc") -> list[str]:
    return [f"{prefix} {i}: SCORE={i % 6}\ndef f{i}(): pass" for i in range(n)]


def test_teacher_answers_and_cache_makes_rerun_free(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("PHIFORGE_TEST_KEY", "sekrit")
    cfg = cfg_for(fake, tmp_path, api_key_env="PHIFORGE_TEST_KEY")
    texts = docs(6) + [docs(1)[0]]  # a duplicate costs no extra request
    teacher = TeacherAnnotator(cfg)
    assert teacher.name == f"test-model @ {fake.url}"
    out = teacher.annotate(texts, ["code"] * 6 + ["code"])
    assert [a.score for a in out] == [0, 1, 2, 3, 4, 5, 0]
    assert out[0].reason == "scripted answer"
    assert len(fake.log) == 6 and teacher.stats["requests"] == 6 and teacher.stats["ok"] == 6
    assert set(fake.auth) == {"Bearer sekrit"}
    teacher.close()

    again = TeacherAnnotator(cfg)
    assert again.annotate(texts, ["code"] * 7) == out
    assert len(fake.log) == 6  # nothing new was sent
    assert again.stats["requests"] == 0 and again.stats["cached"] == 7


def test_teacher_retries_transient_errors(fake, tmp_path):
    fake.failures = [500, 503, 429]
    teacher = TeacherAnnotator(cfg_for(fake, tmp_path, max_retries=3))
    assert teacher.annotate(["SCORE=5"], ["prose"]) == [Annotation(5, "scripted answer")]
    assert [s for _, s in fake.log] == [500, 503, 429, 200]
    assert teacher.stats["requests"] == 4 and teacher.stats["retries"] == 3 and teacher.stats["ok"] == 1


def test_teacher_malformed_answers_are_counted_cached_and_skipped(fake, tmp_path):
    cfg = cfg_for(fake, tmp_path)
    texts = ["SCORE=4 good", "MALFORMED one", "SCORE=2 meh", "MALFORMED two"]
    teacher = TeacherAnnotator(cfg)
    out = teacher.annotate(texts, ["prose"] * 4)
    assert [a and a.score for a in out] == [4, None, 2, None]
    assert teacher.stats["malformed"] == 2 and len(teacher.cache) == 4  # paid for, so kept
    again = TeacherAnnotator(cfg)
    assert again.annotate(texts, ["prose"] * 4) == out and len(fake.log) == 4


def test_teacher_down_fails_cleanly_and_resumes_from_cache(fake, tmp_path):
    cfg = cfg_for(fake, tmp_path, concurrency=2, max_retries=2)
    texts = docs(8)
    fake.ok_budget = 3  # three answers, then the endpoint goes down
    with pytest.raises(TeacherUnavailable) as err:
        TeacherAnnotator(cfg).annotate(texts, ["code"] * 8)
    msg = str(err.value)
    answered = {p for p, s in fake.log if s == 200}
    assert len(answered) == 3
    assert "\n" not in msg and fake.url in msg and "test-model" in msg and "attempts" in msg
    assert f"re-run to resume: 3 answers are cached at {cfg.cache_path}" in msg
    assert "503" in msg  # the last error

    fake.ok_budget = None  # the endpoint recovers
    n_before = len(fake.log)
    teacher = TeacherAnnotator(cfg)
    out = teacher.annotate(texts, ["code"] * 8)
    assert [a.score for a in out] == [i % 6 for i in range(8)]
    resent = fake.prompts[n_before:]
    assert len(resent) == 5 and answered.isdisjoint(resent)
    assert teacher.stats["cached"] == 3 and teacher.stats["requests"] == 5


@pytest.mark.parametrize("concurrency", [1, 3])
def test_teacher_respects_concurrency(fake, tmp_path, concurrency):
    fake.delay = 0.1
    teacher = TeacherAnnotator(cfg_for(fake, tmp_path, concurrency=concurrency))
    out = teacher.annotate(docs(8), ["code"] * 8)
    assert all(a is not None for a in out)
    assert fake.max_in_flight <= concurrency
    assert concurrency == 1 or fake.max_in_flight > 1


def test_teacher_timeouts_retry_then_fail(fake, tmp_path):
    fake.delay = 1.0
    cfg = cfg_for(fake, tmp_path, timeout=0.2, max_retries=1)
    teacher = TeacherAnnotator(cfg)
    t0 = time.perf_counter()
    with pytest.raises(TeacherUnavailable, match="timed out|Timeout") as err:
        teacher.annotate(["SCORE=1"], ["code"])
    assert time.perf_counter() - t0 < 1.8  # two 0.2 s attempts; waiting for the server would take 2 s
    assert teacher.stats["requests"] == 2 and teacher.stats["retries"] == 1 and teacher.stats["ok"] == 0
    assert "0 answers are cached" in str(err.value)


def test_teacher_401_fails_fast(fake, tmp_path):
    fake.status = 401
    teacher = TeacherAnnotator(cfg_for(fake, tmp_path, concurrency=1))
    with pytest.raises(DataError, match="401") as err:
        teacher.annotate(docs(3), ["code"] * 3)
    assert not isinstance(err.value, TeacherUnavailable)  # re-running will not fix a bad key
    assert fake.url in str(err.value) and "\n" not in str(err.value)
    assert len(fake.log) == 1 and teacher.stats["retries"] == 0


@pytest.mark.parametrize(
    "raw, match",
    [
        (("text/html", b"<html>Welcome to nginx!</html>"), "not a chat completion"),
        (("application/json", b'{"object": "list", "data": []}'), "not a chat completion"),
        (("application/json", b"<html>502 Bad Gateway</html>"), "not JSON"),
    ],
)
def test_teacher_wrong_endpoint_fails_fast(fake, tmp_path, raw, match):
    fake.raw = raw
    teacher = TeacherAnnotator(cfg_for(fake, tmp_path, concurrency=1))
    with pytest.raises(DataError, match=match) as err:
        teacher.annotate(docs(2), ["code"] * 2)
    assert fake.url in str(err.value) and "\n" not in str(err.value)
    assert len(fake.log) == 1 and len(teacher.cache) == 0


# --------------------------------------------------------------------------------------------------------------
# the datatrove step


def write_input(folder: Path) -> dict[str, dict]:
    """Two jsonl shards (one per task) mixing code and prose; returns the rows by id."""
    rows = [
        {"id": "good", "text": GOOD + "\n# SCORE=5", "kind": "code"},
        {"id": "proto", "text": PROTOBUF + "\n# SCORE=0", "kind": "code"},
        {"id": "bad-answer", "text": "x = 1  # MALFORMED", "kind": "code"},
        {"id": "lesson", "text": "SCORE=4 Because heat rises, warm air is lighter. " * 10, "kind": "prose"},
        {"id": "text-kind", "text": "SCORE=2 A short note about the weather today. " * 6, "kind": "text"},
        {"id": "no-kind", "text": "def f():\n    return 1  # SCORE=1\n"},
        {"id": "bad-answer-2", "text": "MALFORMED prose " * 20, "kind": "prose"},
    ]
    folder.mkdir(parents=True)
    for shard, part in enumerate((rows[:4], rows[4:])):
        (folder / f"part{shard}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return {r["id"]: r for r in rows}


def run_annotate(tmp_path: Path, name: str, teacher: TeacherConfig) -> tuple[dict[str, dict], dict]:
    out, logs = tmp_path / f"{name}-out", tmp_path / f"{name}-logs"
    step = AnnotateStep(teacher, batch_size=2)
    pickle.loads(pickle.dumps(step))  # what the executor does to ship it to workers
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(tmp_path / "in")), step, JsonlWriter(str(out))],
        tasks=2,
        workers=2,
        logging_dir=str(logs),
    ).run()
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000", "00001"]
    docs_out = {}
    for path in sorted(out.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            for line in f:
                row = json.loads(line)
                docs_out[row["id"]] = row
    stats = {}
    for path in (logs / "stats").glob("*.json"):
        step_stats = next(s for s in json.loads(path.read_text()) if s["name"].endswith("annotate"))
        for key, val in step_stats["stats"].items():
            stats[key] = stats.get(key, 0) + (val["total"] if isinstance(val, dict) else val)
    return docs_out, stats


def test_annotate_step_with_heuristic_under_executor(tmp_path):
    rows = write_input(tmp_path / "in")
    out, stats = run_annotate(tmp_path, "heuristic", TeacherConfig())
    assert set(out) == set(rows)  # the heuristic always answers
    for row in out.values():
        meta = row["metadata"]
        assert (
            meta["teacher"] == "heuristic-v1" and meta["teacher_score"] in range(6) and meta["teacher_reason"]
        )
    assert out["good"]["metadata"]["teacher_score"] > out["proto"]["metadata"]["teacher_score"]
    assert "words" in out["text-kind"]["metadata"]["teacher_reason"]  # kind "text" was read as prose
    assert "words" not in out["no-kind"]["metadata"]["teacher_reason"]  # no kind: code
    assert stats.get("malformed", 0) == 0


def test_annotate_step_with_teacher_under_executor(fake, tmp_path):
    rows = write_input(tmp_path / "in")
    cfg = cfg_for(fake, tmp_path, concurrency=2)
    out, stats = run_annotate(tmp_path, "teacher", cfg)
    assert set(out) == set(rows) - {"bad-answer", "bad-answer-2"}
    expected = {"good": 5, "proto": 0, "lesson": 4, "text-kind": 2, "no-kind": 1}
    assert {k: r["metadata"]["teacher_score"] for k, r in out.items()} == expected
    assert {r["metadata"]["teacher"] for r in out.values()} == {f"test-model @ {fake.url}"}
    assert stats["malformed"] == 2 and stats["teacher_requests"] == len(rows)
    assert len(ResponseCache(cfg.cache_path)) == len(rows)  # both worker processes wrote to one cache
    prose_prompts = [p for p in fake.prompts if "additive" in p]
    assert len(prose_prompts) == 3  # prose, text, and the malformed prose doc
