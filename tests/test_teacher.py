"""The one LLM client: the sqlite cache, an OpenAI-compatible endpoint over real loopback HTTP (slow, flaky,
down, refusing), and the in-process backend on a tiny random phiforge model."""

from __future__ import annotations

import inspect
import json
import math
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.model import build, get_preset
from phiforge.teacher import (
    Answer,
    Cache,
    Client,
    LocalClient,
    Request,
    TeacherError,
    TokenLogprob,
    cache_key,
)
from phiforge.tokenizer import train_bpe


def client_for(server, tmp_path: Path, **kw) -> Client:
    base = dict(backoff=0.01, timeout=5.0, cache_path=tmp_path / "cache.sqlite")
    return Client(server.url, "test-model", **(base | kw))


def reqs(n: int, prefix: str = "doc") -> list[Request]:
    return [Request(f"{prefix} {i}: SCORE={i % 6}", max_tokens=32) for i in range(n)]


# --------------------------------------------------------------------------------------------------------------
# cache


def test_cache_persists_and_is_thread_safe(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    cache = Cache(path)
    assert cache.get("k") is None and len(cache) == 0

    def put_many(start):
        for i in range(start, start + 10):
            cache.put(f"key {i}", f"answer {i}")

    threads = [threading.Thread(target=put_many, args=(k * 10,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 40
    cache.close()
    again = Cache(path)
    assert len(again) == 40 and again.get("key 1") == "answer 1"
    (tmp_path / "not-sqlite").write_text("hello, I am a text file, not a database\n" * 100)
    with pytest.raises(TeacherError, match="not-sqlite"):
        Cache(tmp_path / "not-sqlite")


def test_cache_key_covers_endpoint_model_prompt_and_every_parameter():
    r = Request("p")
    keys = {
        cache_key("u", "m", r),
        cache_key("u2", "m", r),
        cache_key("u", "m2", r),
        cache_key("u", "m", Request("p2")),
        cache_key("u", "m", Request("p", temperature=0.7)),
        cache_key("u", "m", Request("p", max_tokens=8)),
        cache_key("u", "m", Request("p", n=2)),
        cache_key("u", "m", Request("p", stop=("\n",))),
        cache_key("u", "m", Request("p", logprobs=True, top_logprobs=5)),
        cache_key("u", "m", Request("p", chat=False)),
        cache_key("u", "m", Request("p", prefill="Score:")),
        cache_key("u", "m", Request("p", seed=1)),
    }
    assert len(keys) == 12
    assert cache_key("u", "m", Request("p", stop=["\n"])) == cache_key("u", "m", Request("p", stop=("\n",)))


def test_answer_round_trips_through_json():
    a = Answer(["x", "y"], [[TokenLogprob(" 4", -0.1, ((" 4", -0.1), (" 3", -2.5)))], []])
    b = Answer.from_json(a.to_json())
    assert b.texts == a.texts and b.logprobs == a.logprobs and b.cached and b.ok
    with pytest.raises(TeacherError, match="top_logprobs"):
        Request("p", top_logprobs=50)


# --------------------------------------------------------------------------------------------------------------
# endpoint


def test_answers_and_cache_make_rerun_free(teacher_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PHIFORGE_TEST_KEY", "sekrit")
    rs = reqs(6) + [reqs(1)[0]]  # a duplicate costs no extra request
    client = client_for(teacher_server, tmp_path, api_key_env="PHIFORGE_TEST_KEY")
    assert client.name == f"test-model @ {teacher_server.url}"
    out = client.ask(rs)
    assert [a.text[:8] for a in out] == [f"Score: {i % 6}" for i in range(6)] + ["Score: 0"]
    assert len(teacher_server.log) == 6 and client.stats["asked"] == 6 and client.stats["answered"] == 6
    assert set(teacher_server.auth) == {"Bearer sekrit"}
    client.close()

    again = client_for(teacher_server, tmp_path)
    assert [a.texts for a in again.ask(rs)] == [a.texts for a in out]
    assert len(teacher_server.log) == 6  # nothing new was sent
    assert again.stats["asked"] == 0 and again.stats["cached"] == 7


def test_request_parameters_reach_the_endpoint(teacher_server, tmp_path):
    client = client_for(teacher_server, tmp_path)
    chat, completion = client.ask(
        [
            Request("SCORE=2", max_tokens=7, temperature=0.5, n=3, stop=("\n\n",), seed=4, system="be brief"),
            Request("SCORE=4", chat=False, max_tokens=5, prefill="Score:"),
        ]
    )
    assert chat.texts == ["Score: 2\nReason: scripted answer"] * 3 and completion.text.startswith("Score: 4")
    by_prompt = {p: b for (p, _), b in zip(teacher_server.log, teacher_server.bodies, strict=True)}
    body = by_prompt["SCORE=2"]
    assert (body["max_tokens"], body["temperature"], body["n"], body["stop"], body["seed"]) == (
        7,
        0.5,
        3,
        ["\n\n"],
        4,
    )
    assert body["messages"][0] == {"role": "system", "content": "be brief"} and "logprobs" not in body
    assert by_prompt["SCORE=4Score:"]["max_tokens"] == 5  # completion mode: the prefill ends the prompt


@pytest.mark.parametrize("chat", [True, False])
def test_logprobs_with_top_alternatives_in_both_layouts(teacher_server, tmp_path, chat):
    p = {" 4": 0.6, " 3": 0.3, " 5": 0.1}
    req = Request(
        f"P={json.dumps(p)}", chat=chat, max_tokens=4, logprobs=True, top_logprobs=3, prefill="Score:"
    )
    (ans,) = client_for(teacher_server, tmp_path).ask([req])
    first = ans.logprobs[0][0]
    assert first.token == " 4" and math.isclose(first.logprob, math.log(0.6))
    assert [t for t, _ in first.top] == [" 4", " 3", " 5"]
    assert math.isclose(sum(math.exp(lp) for _, lp in first.top), 1.0)
    if chat:  # a chat prefill is the last assistant message, and vLLM is told to continue it
        body = teacher_server.bodies[0]
        assert body["messages"][-1] == {"role": "assistant", "content": "Score:"}
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    (cached,) = client_for(teacher_server, tmp_path).ask([req])
    assert cached.cached and cached.logprobs == ans.logprobs


def test_retries_transient_errors(teacher_server, tmp_path):
    teacher_server.failures = [500, 503, 429]
    client = client_for(teacher_server, tmp_path, max_retries=3)
    assert client.ask([Request("SCORE=5")])[0].text.startswith("Score: 5")
    assert [s for _, s in teacher_server.log] == [500, 503, 429, 200]
    assert client.stats["asked"] == 4 and client.stats["retried"] == 3 and client.stats["answered"] == 1


def test_endpoint_down_returns_failures_and_stops_sending(teacher_server, tmp_path):
    teacher_server.ok_budget = 3  # three answers, then the endpoint goes down
    client = client_for(teacher_server, tmp_path, concurrency=1, max_retries=1, give_up_after=2)
    out = client.ask(reqs(8))  # no exception: failures are answers
    assert [a.ok for a in out] == [True] * 3 + [False] * 5
    assert all(a.retryable and "\n" not in a.error for a in out[3:])
    assert "failed after 2 attempts" in out[3].error and "503" in out[3].error
    assert out[5].error.startswith("not sent: 2 requests in a row failed")
    assert len(teacher_server.log) == 3 + 2 * 2  # two give-ups of two attempts each, then nothing
    assert client.stats["failed"] == 5 and len(client.cache) == 3  # failures are not cached

    teacher_server.ok_budget = None  # the endpoint recovers: a re-run asks only what failed
    n_before = len(teacher_server.log)
    again = client_for(teacher_server, tmp_path).ask(reqs(8))
    assert all(a.ok for a in again) and len(teacher_server.log) - n_before == 5


def test_a_bad_request_fails_alone(teacher_server, tmp_path):
    teacher_server.failures = [400]
    client = client_for(teacher_server, tmp_path, concurrency=1)
    out = client.ask(reqs(3))
    assert [a.ok for a in out] == [False, True, True] and not out[0].retryable
    assert "HTTP 400" in out[0].error and client.stats["retried"] == 0


@pytest.mark.parametrize("concurrency", [1, 3])
def test_respects_concurrency(teacher_server, tmp_path, concurrency):
    teacher_server.delay = 0.1
    out = client_for(teacher_server, tmp_path, concurrency=concurrency).ask(reqs(8))
    assert all(a.ok for a in out)
    assert teacher_server.max_in_flight <= concurrency
    assert concurrency == 1 or teacher_server.max_in_flight > 1


def test_timeouts_retry_then_fail(teacher_server, tmp_path):
    teacher_server.delay = 1.0
    client = client_for(teacher_server, tmp_path, timeout=0.2, max_retries=1)
    t0 = time.perf_counter()
    (ans,) = client.ask([Request("SCORE=1")])
    assert time.perf_counter() - t0 < 1.8  # two 0.2 s attempts; waiting for the server would take 2 s
    assert not ans.ok and ans.retryable and ("timed out" in ans.error or "Timeout" in ans.error)
    assert client.stats["asked"] == 2 and client.stats["retried"] == 1 and client.stats["answered"] == 0


def test_401_fails_fast_for_the_whole_batch(teacher_server, tmp_path):
    teacher_server.status = 401
    client = client_for(teacher_server, tmp_path, concurrency=1)
    out = client.ask(reqs(3))
    assert "401" in out[0].error and teacher_server.url in out[0].error and "\n" not in out[0].error
    assert all(not a.ok and not a.retryable for a in out)  # re-running will not fix a bad key
    assert len(teacher_server.log) == 1 and client.stats["retried"] == 0


@pytest.mark.parametrize(
    "raw, match",
    [
        (("text/html", b"<html>Welcome to nginx!</html>"), "not a chat completion"),
        (("application/json", b'{"object": "list", "data": []}'), "not a chat completion"),
        (("application/json", b"<html>502 Bad Gateway</html>"), "not JSON"),
    ],
)
def test_wrong_endpoint_fails_fast(teacher_server, tmp_path, raw, match):
    teacher_server.raw = raw
    client = client_for(teacher_server, tmp_path, concurrency=1)
    out = client.ask(reqs(2))
    assert match in out[0].error and teacher_server.url in out[0].error and "\n" not in out[0].error
    assert len(teacher_server.log) == 1 and len(client.cache) == 0


# --------------------------------------------------------------------------------------------------------------
# in-process backend


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher-model")
    lines = inspect.getsource(json).splitlines(keepends=True) + inspect.getsource(textwrap).splitlines(True)
    tok = train_bpe(lines, 600, out_dir=path)
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        original_max_position_embeddings=256, eos_token_id=tok.eos_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return Engine(build(cfg, seed=3), tok)


def test_local_answers_like_the_engine_and_caches(engine, tmp_path):
    from phiforge.infer.sampling import SamplingParams

    client = LocalClient(engine, model="tiny", cache_path=tmp_path / "c.sqlite", batch_size=2)
    assert client.name == "tiny @ in-process"
    rs = [Request(f"def f{i}(x):", max_tokens=6) for i in range(3)] + [
        Request("import json", chat=False, max_tokens=6)
    ]
    out = client.ask(rs)
    for r, a in zip(rs[:3], out[:3], strict=True):  # batched, left-padded: same as the engine alone
        assert (
            a.text
            == engine.chat([{"role": "user", "content": r.prompt}], SamplingParams(max_new_tokens=6)).text
        )
    assert out[3].text == engine.complete("import json", SamplingParams(max_new_tokens=6)).text
    assert client.stats["asked"] == 4 and client.stats["answered"] == 4
    again = LocalClient(engine, model="tiny", cache_path=tmp_path / "c.sqlite")
    assert [a.texts for a in again.ask(rs)] == [a.texts for a in out] and again.stats["asked"] == 0


def test_local_n_samples_and_a_too_long_prompt_fails_alone(engine, tmp_path):
    client = LocalClient(engine)
    long = "x " * 2000
    out = client.ask([Request("a", n=3, temperature=1.0, seed=0, max_tokens=8), Request(long, max_tokens=4)])
    assert len(out[0].texts) == 3 and len(set(out[0].texts)) > 1  # sampled rows differ
    assert not out[1].ok and "context" in out[1].error and client.stats["failed"] == 1


def test_local_logprobs_are_the_models_distribution(engine):
    client = LocalClient(engine)
    (ans,) = client.ask(
        [Request("def add(a, b):", max_tokens=5, logprobs=True, top_logprobs=4, prefill="    ")]
    )
    tok = engine.tok
    lps = ans.logprobs[0]
    assert len(lps) > 0 and "".join(t.token for t in lps) == ans.text
    ids = tok.apply_chat_template([{"role": "user", "content": "def add(a, b):"}], add_generation_prompt=True)
    ids = ids + tok.encode("    ")
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(torch.tensor([ids]))[0, -1].float(), -1)
    first = lps[0]
    best = int(logp.argmax())
    assert first.token == tok.decode([best]) and math.isclose(first.logprob, float(logp[best]), abs_tol=1e-5)
    assert len(first.top) == 4 and first.top[0] == (first.token, pytest.approx(first.logprob, abs=1e-6))
    assert all(a[1] >= b[1] for a, b in zip(first.top, first.top[1:], strict=False))
