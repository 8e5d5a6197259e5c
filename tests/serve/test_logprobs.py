"""Logprobs in OpenAI's two layouts from a served tiny random Llama with SmolLM2's ChatML template: the
`openai` client reads them, they equal the engine's, and the one teacher client (G-Eval's prefill included)
reads them from `phiforge serve` as it does from vLLM."""

from __future__ import annotations

import inspect
import json
import math
import textwrap

import openai
import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import ModelConfig, save_model
from phiforge.teacher import Client, Request
from phiforge.tokenizer import train_bpe

MODEL = "tiny-test"
# SmolLM2-135M-Instruct's tokenizer_config.json chat_template (ChatML with a default system message)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, model_factory):
    path = tmp_path_factory.mktemp("llama-chatml")
    lines = inspect.getsource(json).splitlines(keepends=True) + ["café naïve 日本語 🦀\n"] * 8
    tok = train_bpe(lines + inspect.getsource(textwrap).splitlines(True), 600)
    tok.chat_template = CHATML
    tok.save(path)
    cfg = ModelConfig(
        arch="llama", vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=100000.0,
        tie_word_embeddings=True, eos_token_id=tok.eos_id,
    )  # fmt: skip
    save_model(model_factory(cfg, seed=7), path)
    return path


@pytest.fixture(scope="module")
def served(llama_dir, start_server):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with start_server(llama_dir, max_batch=4) as s:
        yield s
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _want(engine: Engine, ids: list[int], n: int, k: int):
    p = SamplingParams(max_new_tokens=n, logprobs=k, ignore_eos=True)
    return engine.generate([ids], p)[0]


def test_chat_uses_the_models_template_and_returns_logprobs(client, served):
    engine = served.srv.engine
    msgs = [{"role": "user", "content": "Explain json.dumps"}]
    r = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    ids = engine.tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert engine.tok.render_chat(msgs, True).endswith("<|im_start|>assistant\n")
    assert r.usage.prompt_tokens == len(ids)  # ChatML, not Phi-3's template
    want = _want(engine, ids, 12, 3)
    c = r.choices[0]
    assert c.message.content == want.text
    content = c.logprobs.content
    assert [t.token for t in content] == [engine.tok.decode([t]) for t in want.tokens]
    raw = b"".join(bytes(t.bytes) for t in content)  # a random model writes broken UTF-8 too: bytes are exact
    assert raw.decode(errors="replace") == want.text
    for t, lp, top in zip(content, want.logprobs, want.top_logprobs, strict=True):
        assert math.isclose(t.logprob, lp, abs_tol=1e-5)
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert [a.token for a in t.top_logprobs] == [engine.tok.decode([i]) for i, _ in top]
        assert t.top_logprobs[0].token == t.token  # greedy: the chosen token is the most likely


def test_completion_logprobs_legacy_layout(client, served):
    engine = served.srv.engine
    prompt = "def dumps(obj):\n"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=10, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    want = _want(engine, engine.tok.encode(prompt), 10, 2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text == want.text
    assert lp.token_logprobs == pytest.approx(want.logprobs, abs=1e-5)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:j]) for j in range(len(lp.tokens))]
    assert all(1 <= len(d) <= 2 and max(d.values()) == pytest.approx(p, abs=1e-5)
               for d, p in zip(lp.top_logprobs, lp.token_logprobs, strict=True))  # fmt: skip
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    "body,param",
    [
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"logprobs": True, "stream": True}, "logprobs"),
    ],
)
def test_bad_logprob_requests_get_400(client, body, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body=body
        )
    assert e.value.body["param"] == param


def test_teacher_client_reads_logprobs_and_the_prefill_is_continued(served):
    """The G-Eval path against `phiforge serve`: the prefill is continued (vLLM's continue_final_message),
    and the client's logprobs are the engine's on exactly that prompt."""
    engine = served.srv.engine
    client = Client(served.url + "/v1", MODEL, concurrency=2)
    try:
        for chat in (True, False):
            req = Request("Rate this code: x = 1", chat=chat, max_tokens=4, logprobs=True, top_logprobs=5,
                          prefill="Score:")  # fmt: skip
            (ans,) = client.ask([req])
            assert ans.ok, ans.error
            if chat:
                msgs = [{"role": "user", "content": req.prompt}, {"role": "assistant", "content": "Score:"}]
                text = engine.tok.render_chat(msgs)
                ids = engine.tok.encode(text[: text.rfind("Score:") + len("Score:")])
            else:
                ids = engine.tok.encode(req.prompt + req.prefill)
            want = engine.generate([ids], SamplingParams(max_new_tokens=4, logprobs=5))[0]
            got = ans.logprobs[0]
            assert ans.text == want.text and len(got) == len(want.tokens) > 0
            assert [t.logprob for t in got] == pytest.approx(want.logprobs, abs=1e-5)
            assert all(len(t.top) == 5 for t in got)
    finally:
        client.close()
