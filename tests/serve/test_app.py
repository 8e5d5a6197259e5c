"""The OpenAI-compatible server, live on loopback: the official `openai` client (streaming and not),
concurrent clients batched together, and raw HTTP (httpx2) for errors, auth and client disconnects."""

from __future__ import annotations

import json
import threading
import time

import httpx2 as httpx
import openai
import pytest

from phiforge.infer.sampling import SamplingParams

MODEL = "tiny-test"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def engine(server):
    return server.srv.engine  # same weights; generate() runs only when the batcher is idle in these tests


def test_models(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model"


def test_completion_matches_engine(client, engine):
    prompt = "def encode(self, obj):\n"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=30, temperature=0, extra_body={"ignore_eos": True}
    )
    want = engine.complete(prompt, SamplingParams(max_new_tokens=30, ignore_eos=True))
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    n_prompt = len(engine.tok.encode(prompt))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        n_prompt,
        30,
        n_prompt + 30,
    )


def test_chat_streaming_equals_non_streaming(client, engine):
    msgs = [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Wrap this text."},
    ]
    kw = dict(model=MODEL, messages=msgs, max_tokens=40, temperature=0.8, top_p=0.9, seed=123)
    full = client.chat.completions.create(**kw)
    want = engine.chat(msgs, SamplingParams(max_new_tokens=40, temperature=0.8, top_p=0.9, seed=123))
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == want.text
    assert full.choices[0].finish_reason == want.finish_reason
    assert full.usage.completion_tokens == len(want.tokens)
    assert full.usage.prompt_tokens == len(engine.tok.apply_chat_template(msgs, add_generation_prompt=True))

    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for d in deltas if d) > 1, "the reply should arrive in several chunks"
    assert "".join(deltas) == want.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [want.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert all(c.id == chunks[0].id for c in chunks)


def test_stop_and_max_tokens(client, engine):
    prompt = "import re\n"
    base = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    text = base.choices[0].text
    stop = text[12:15]
    r = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=40,
        temperature=0,
        stop=[stop, "\x00never"],
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[: text.index(stop)]
    streamed = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=40,
        temperature=0,
        stop=stop,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    short = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, extra_body={"ignore_eos": True}
    )
    assert short.usage.completion_tokens == 3 and text.startswith(short.choices[0].text)


def test_concurrent_streams_are_batched_and_exact(client, server, engine):
    prompts = [f"def f{i}(x):\n    return {'x' * (i + 1)}" for i in range(6)]
    want = [engine.complete(p, SamplingParams(max_new_tokens=50, ignore_eos=True)).text for p in prompts]
    got: dict[int, str] = {}
    start = threading.Barrier(len(prompts))

    def run(i):
        start.wait()
        s = client.completions.create(
            model=MODEL,
            prompt=prompts[i],
            max_tokens=50,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        got[i] = "".join(c.choices[0].text for c in s)

    server.srv.batcher.peak_batch = 0
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(prompts))] == want
    assert server.srv.batcher.peak_batch >= 3, "concurrent requests should share decode steps"


def error(r: httpx.Response, status: int, param=None, code=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code, err
    return err


@pytest.mark.parametrize(
    "body,param",
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.[0].content"),
        ({"model": None}, "model"),
        ({"logprobs": 3}, "logprobs"),  # chat: a boolean (the count is top_logprobs)
    ],
)
def test_invalid_chat_requests_get_400(server, body, param):
    req = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    error(httpx.post(server.url + "/v1/chat/completions", json=req), 400, param)


def test_other_errors(server):
    url = server.url + "/v1/completions"
    err = error(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]
    error(httpx.post(url, json={"model": MODEL, "prompt": {"a": 1}}), 400, "prompt")
    error(httpx.post(url, json={"model": MODEL, "prompt": [1, 99999]}), 400, "prompt")
    error(httpx.post(url, json={"model": "gpt-4", "prompt": "x"}), 404, "model", "model_not_found")
    ctx = server.srv.ctx
    too_long = {"model": MODEL, "prompt": [7] * ctx}
    err = error(httpx.post(url, json=too_long), 400, "prompt", "context_length_exceeded")
    assert str(ctx) in err["message"]
    over = {"model": MODEL, "prompt": [7] * 10, "max_tokens": ctx}
    error(httpx.post(url, json=over), 400, "max_tokens", "context_length_exceeded")
    error(httpx.get(server.url + "/v1/nothing"), 404, None, "not_found")


def test_api_key(model_dir, start_server):
    with start_server(model_dir, api_key="s3cret") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.get(s.url + "/v1/models", headers=headers)
            error(r, 401, None, "invalid_api_key")
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        error(httpx.post(s.url + "/v1/completions", json=body), 401, None, "invalid_api_key")
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(**body).usage.completion_tokens <= 2
        assert httpx.get(s.url + "/").status_code == 200  # the page itself is public; it sends the key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_client_disconnect_frees_the_row(server):
    b = server.srv.batcher
    cancelled, steps0 = b.n_cancelled, b.steps
    body = {"model": MODEL, "prompt": "class A:\n", "max_tokens": 150, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = []
        for line in lines:
            if line.startswith("data: {"):
                got.append(json.loads(line[6:]))
            if len(got) >= 3:
                break
    # the connection is closed mid-stream: the row must leave the batch long before 150 tokens
    deadline = time.time() + 10
    while (b.n_cancelled == cancelled or b.num_active()) and time.time() < deadline:
        time.sleep(0.01)
    assert b.n_cancelled == cancelled + 1 and b.num_active() == 0
    steps = b.steps
    time.sleep(0.3)
    assert b.steps == steps and steps - steps0 < 150


def test_non_streaming_client_that_gives_up_frees_the_row(server, monkeypatch):
    b = server.srv.batcher
    cancelled, model = b.n_cancelled, b.model

    def slow_model(*a, **kw):  # 150 tokens now take ~3 s; the client gives up after 0.5 s
        time.sleep(0.02)
        return model(*a, **kw)

    monkeypatch.setattr(b, "model", slow_model)
    monkeypatch.setattr(b, "_native_ok", False)  # a row alone would take the native decode path
    monkeypatch.setattr(b, "_rows_ok", False)  # and many rows the native RowsDecoder: both skip b.model
    body = {"model": MODEL, "prompt": "x = ", "max_tokens": 150, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.5)
    deadline = time.time() + 10
    while b.n_cancelled == cancelled and time.time() < deadline:
        time.sleep(0.01)
    assert b.n_cancelled == cancelled + 1


def test_a_failing_step_fails_its_request_not_the_server(server, client, monkeypatch):
    b = server.srv.batcher

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(b.engine, "prefill", broken)  # admission prefills through the engine
    r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "boom" in r.json()["error"]["message"]
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True}) as s:  # fmt: skip
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert "boom" in json.loads(lines[-2][6:])["error"]["message"] and lines[-1] == "data: [DONE]"
    monkeypatch.undo()
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=3).usage.completion_tokens <= 3
