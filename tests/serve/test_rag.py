"""`phiforge serve --index`: chat requests answered with retrieval. The served prompt is rag.answer's (the
reply equals the engine's on that very prompt), sources come back on the JSON reply and on the stream's first
chunk, earlier turns stay in front, bad requests get 400s and a bad index is refused at startup."""

from __future__ import annotations

import json
import shutil

import httpx2 as httpx
import openai
import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.rag import Index, RagError
from phiforge.rag.answer import build_prompt
from phiforge.serve.app import serve

MODEL = "tiny-test"
Q = "how do I escape a string for the shell"


@pytest.fixture(scope="module")
def rag(start_server, model_dir, rag_index):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with start_server(model_dir, index=rag_index) as s:
        yield s
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def client(rag):
    return openai.OpenAI(base_url=rag.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, messages, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8, **kw)


def test_reply_is_the_rag_prompt_answered_with_its_sources(rag, client, rag_index):
    r = chat(client, [{"role": "user", "content": Q}])
    engine = rag.srv.engine
    prompt, used, n = build_prompt(engine, rag_index, Q, max_new_tokens=8)
    assert "[1] shells.txt\nshlex.quote(s) returns a shell-escaped version" in prompt  # the best chunk, cited
    sources = r.model_extra["sources"]
    assert [s["doc_id"] for s in sources] == [h.doc_id for h in used] and sources[0]["doc_id"] == "shells.txt"
    assert sources[0] == {"n": 1, "doc_id": "shells.txt", "chunk": 0, "title": "shells.txt",
                          "score": pytest.approx(used[0].score)}  # fmt: skip
    assert r.usage.prompt_tokens == n == len(engine.tok.encode(prompt))
    want = engine.generate([engine.tok.encode(prompt)], SamplingParams(max_new_tokens=8, temperature=0))[0]
    assert r.choices[0].message.content == want.text  # the model saw exactly that prompt


def test_stream_carries_the_sources_on_its_first_chunk(client):
    full = chat(client, [{"role": "user", "content": Q}])
    chunks = list(chat(client, [{"role": "user", "content": Q}], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["sources"] == full.model_extra["sources"]
    assert all("sources" not in c.model_extra for c in chunks[1:])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content


def test_earlier_turns_stay_and_only_the_last_message_is_searched(rag, rag_index):
    # short turns: the test model's context (192) holds one source and little else
    history = [{"role": "user", "content": "zip?"}, {"role": "assistant", "content": "extractall [1]"}]
    body = {"model": MODEL, "messages": [*history, {"role": "user", "content": Q}], "max_tokens": 8}
    ids, sources = rag.srv.rag_ids(body)
    text = rag.srv.tok.decode(ids)
    assert sources[0]["doc_id"] == "shells.txt"
    assert text.index("zip?") < text.index("extractall [1]") < text.index("[1] shells")
    prompt, _, _ = build_prompt(rag.srv.engine, rag_index, Q, max_new_tokens=8, history=history)
    assert ids == rag.srv.tok.encode(prompt)


def test_bad_requests(rag):
    def post(messages, **kw):
        body = {"model": MODEL, "messages": messages, **kw}
        return httpx.post(rag.url + "/v1/chat/completions", json=body, timeout=60)

    user = [{"role": "user", "content": Q}]
    r = post([*user, {"role": "assistant", "content": "Use"}], continue_final_message=True)
    assert r.status_code == 400 and "must end with the user message" in r.json()["error"]["message"]
    r = post([{"role": "user", "content": "  "}])
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the last user message is empty")
    r = post(user, max_tokens=192)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["message"].endswith("192 tokens for the completion, which leaves no room for a prompt.")
    r = post([{"role": "user", "content": "why " * 300}])
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert err["message"].startswith("the question alone takes")


def test_without_an_index_nothing_is_added(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": Q}], "max_tokens": 4}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and "sources" not in r.json()


def test_a_bad_index_is_refused_at_startup(
    phiforge, one_line_error, model_dir, rag_index, tmp_path, monkeypatch
):
    empty = Index.create(tmp_path / "empty").path
    one_line_error(phiforge("serve", "-m", model_dir, "--index", empty), f"{empty}: the index is empty")
    other = tmp_path / "other"  # built with an embedder directory that is not here
    shutil.copytree(rag_index.path, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "embedder": str(tmp_path / "moved-away")}))

    def no_model(*a, **kw):
        raise AssertionError("the model loaded before the index was checked")

    monkeypatch.setattr(Engine, "load", no_model)
    with pytest.raises(RagError, match=r"other: built with embedder '.*moved-away': not 'all-MiniLM-L6-v2'"):
        serve(model_dir, index=other)  # in-process (a second CLI run costs 5 s)
