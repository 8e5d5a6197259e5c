"""Passkey retrieval (eval/passkey.py): exact prompt lengths, the needle where asked, scoring by the greedy
continuation through the engine."""

from __future__ import annotations

import pytest

from phiforge.eval.passkey import accuracy, passkey_eval, passkey_prompt
from phiforge.infer.engine import Engine, Result
from phiforge.model import build, get_preset
from phiforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def engine(random_model_dir):
    tok = Tokenizer.from_file(random_model_dir)  # a 400-token BPE: a 5-digit key is several tokens
    cfg = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, max_position_embeddings=512, num_hidden_layers=2
    )
    return Engine(build(cfg, seed=0), tok)


@pytest.mark.parametrize("style,length", [("text", 400), ("code", 120)])
def test_prompt_length_and_depth(engine, style, length):
    tok = engine.tokenizer
    needle = tok.encode(
        "PASSKEY = 12345\n"
        if style == "code"
        else "The pass key is 12345. Remember it. 12345 is the pass key. "
    )
    head = len(passkey_prompt(tok, length, 0.0, 12345, style)) - length  # 0: exact length
    assert head == 0
    starts = []
    for depth in (0.0, 0.5, 1.0):
        ids = passkey_prompt(tok, length, depth, 12345, style)
        assert len(ids) == length
        starts.append(next(i for i in range(len(ids)) if ids[i : i + len(needle)] == needle))
    room = length - len(needle) - starts[0] - (length - starts[2] - len(needle))  # filler tokens
    assert starts[2] - starts[0] == room and abs(starts[1] - starts[0] - room / 2) <= 1


def test_prompt_errors(engine):
    with pytest.raises(ValueError, match="too short"):
        passkey_prompt(engine.tokenizer, 5, 0.5, 12345)
    with pytest.raises(ValueError, match="depth 1.5"):
        passkey_prompt(engine.tokenizer, 60, 1.5, 12345)
    with pytest.raises(ValueError, match="style 'poem'"):
        passkey_prompt(engine.tokenizer, 60, 0.5, 12345, "poem")


def test_eval_scores_the_greedy_continuation(engine, monkeypatch):
    rows = passkey_eval(engine, [100, 140], [0.2, 0.8], trials=2, style="code", seed=1)
    assert len(rows) == 8 and len({r["key"] for r in rows}) == 8
    assert all(isinstance(r["correct"], bool) for r in rows)
    tok: Tokenizer = engine.tokenizer

    def oracle(prompts, params, on_token=None):  # a model that always retrieves: reads the key back out
        text = tok.decode(prompts[0])
        key = text.split("PASSKEY = ")[1].split("\n")[0]
        return [Result(tok.encode(f" {key}"))]

    monkeypatch.setattr(engine, "generate", oracle)
    rows = passkey_eval(engine, [100, 140], [0.5], trials=2, style="code", seed=1)
    assert accuracy(rows) == {100: 1.0, 140: 1.0}
