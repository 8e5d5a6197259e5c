import argparse
import inspect
import json
import string
import textwrap

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers

from phiforge.tokenizer import PHI3_CHAT_TEMPLATE, SPECIAL_TOKENS, StreamDecoder, Tokenizer, train_bpe

VOCAB = 1000


def _corpus() -> list[str]:
    # Real code (tabs, indentation, punctuation) plus some accented/CJK text. Emoji are left out on
    # purpose so they stay split into single-byte tokens: that is what exercises StreamDecoder.
    lines = inspect.getsource(argparse).splitlines(keepends=True)
    lines += inspect.getsource(textwrap).splitlines(keepends=True)
    lines += [f"café naïve façade {i}\tjalapeño\n" for i in range(50)]
    lines += ["日本語のテキストです。中文文本。\n"] * 30
    return lines


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe(_corpus(), VOCAB)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return d


@pytest.fixture(scope="module")
def hf_tok(saved):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(saved)


# ---- basics ----


def test_special_tokens_are_single_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for t in SPECIAL_TOKENS:
        assert tok.encode(t) == [tok.token_to_id(t)]
        assert tok.id_to_token(tok.token_to_id(t)) == t
    assert tok.eos_id == 0 and tok.end_id == 4
    assert tok.stop_ids == {0, 4}
    ids = tok.encode("hi<|end|>\n<|user|>")
    assert ids[-3:] == [4, *tok.encode("\n"), 1]  # the "\n" after <|end|> survives as its own token


def test_vocab_and_lookup(tok):
    assert tok.vocab_size == VOCAB
    assert tok.token_to_id("definitely-not-a-token") is None
    assert tok.id_to_token(10**6) is None
    assert tok.bos_id is None  # trained tokenizer has no BOS, like Phi-3's chat usage


@pytest.mark.parametrize(
    "s",
    [
        "",
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "  leading and trailing spaces  ",
        "Ünïcödé: café, naïve, jalapeño, Ελληνικά, русский",
        "CJK: 日本語のテキスト 中文 한국어",
        "emoji: 🦀🎉👩‍💻 and flags 🇺🇸",
        "def f(x):\n\tif x:\n\t\treturn {'a': [1, 2]}\r\n    pass\n\n",
        string.printable,
    ],
)
def test_round_trip(tok, s):
    assert tok.decode(tok.encode(s)) == s


def test_skip_special_tokens(tok):
    ids = tok.encode("<|user|>\nhi<|end|>\n")
    assert tok.decode(ids) == "<|user|>\nhi<|end|>\n"
    assert tok.decode(ids, skip_special_tokens=True) == "\nhi\n"


def test_train_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], 100)


# ---- chat template ----

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are a pirate. 🏴‍☠️"},
        {"role": "user", "content": "def f():\n\treturn 1\n"},
        {"role": "assistant", "content": "Arr, it returns 1."},
        {"role": "user", "content": "  And café?  "},
        {"role": "assistant", "content": "日本語"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "empty system is dropped"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}],
]


def test_render_format(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tok.render_chat(msgs) == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|endoftext|>"
    assert tok.render_chat(msgs, add_generation_prompt=True).endswith("<|user|>\nU<|end|>\n<|assistant|>\n")


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_matches_transformers(tok, hf_tok, messages, add_generation_prompt):
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert tok.render_chat(messages, add_generation_prompt) == text
    # transformers 5 returns a BatchEncoding by default; return_dict=False gives the plain id list.
    ids = hf_tok.apply_chat_template(
        messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt
    )
    assert tok.apply_chat_template(messages, add_generation_prompt) == list(ids)


def test_saved_template_is_phi3(saved, hf_tok):
    assert hf_tok.chat_template == PHI3_CHAT_TEMPLATE
    cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == PHI3_CHAT_TEMPLATE
    assert cfg["eos_token"] == "<|endoftext|>" and "bos_token" not in cfg


def test_bad_messages(tok):
    with pytest.raises(ValueError, match="'tool'"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="empty"):
        tok.render_chat([])
    with pytest.raises(ValueError, match="string"):
        tok.render_chat([{"role": "user", "content": None}])


# ---- save / load ----


def test_save_load_round_trip(tok, tmp_path):
    tok.model_max_length = 4096
    try:
        tok.save(tmp_path / "out")
    finally:
        tok.model_max_length = None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    for p in (tmp_path / "out", tmp_path / "out" / "tokenizer.json"):
        t2 = Tokenizer.from_file(p)
        assert t2.chat_template == PHI3_CHAT_TEMPLATE
        assert t2.model_max_length == 4096 and t2.eos_token == "<|endoftext|>"
        s = "round trip <|end|> café 🦀"
        assert t2.encode(s) == tok.encode(s)


def test_from_file_reads_config_tokens(tok, tmp_path):
    tok.save(tmp_path)
    cfg = {"bos_token": {"content": "<|system|>", "__type": "AddedToken"}, "eos_token": "<|end|>"}
    cfg["chat_template"] = "{{ custom }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    t2 = Tokenizer.from_file(tmp_path)
    assert (t2.bos_token, t2.eos_token, t2.chat_template) == ("<|system|>", "<|end|>", "{{ custom }}")
    assert (t2.bos_id, t2.eos_id) == (3, 4)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        Tokenizer.from_file(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_file(tmp_path)  # a directory without tokenizer.json


@pytest.mark.parametrize("content", ["{not json", '{"valid": "json, but not a tokenizer"}'])
def test_garbage_json(tmp_path, content):
    p = tmp_path / "tokenizer.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=str(p)):
        Tokenizer.from_file(p)


def test_garbage_config(tok, tmp_path):
    tok.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_file(tmp_path)


# ---- streaming ----


def _stream(tok, ids, **kw):
    sd = StreamDecoder(tok, **kw)
    pieces = [sd.push(i) for i in ids]
    return pieces, sd.flush()


@pytest.mark.parametrize(
    "s", ["emoji 🦀🎉 then text", "日本語のテキスト 한국어 and café", "👩‍💻<|end|>\n🇺🇸", "plain ascii only"]
)
def test_stream_decoder_byte_level(tok, s):
    ids = tok.encode(s)
    pieces, tail = _stream(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids) == s
    assert tail == "" and not any("\ufffd" in p for p in pieces)


def test_stream_decoder_holds_split_chars(tok):
    ids = tok.encode("🦀")
    assert len(ids) > 1  # the crab is 4 UTF-8 bytes, never merged by this corpus
    pieces, tail = _stream(tok, ids)
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🦀" and tail == ""
    # A truncated char is held until flush(), which then emits the replacement char.
    pieces, tail = _stream(tok, ids[:1])
    assert pieces == [""] and tail == "\ufffd"


def test_stream_decoder_skip_special(tok):
    ids = tok.encode("<|assistant|>\nhi 🦀<|end|>\n")
    pieces, tail = _stream(tok, ids, skip_special_tokens=True)
    assert "".join(pieces) + tail == "\nhi 🦀\n"


def test_stream_decoder_sentencepiece_style():
    # Real Phi-3 is a Llama/SentencePiece BPE: "▁" for spaces, byte fallback, and a decoder that strips
    # the leading space of a decode. Naive per-token decoding would drop every space.
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": b + 1 for b in range(256)}}
    for w in ["▁", *string.ascii_letters, "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w", "▁wo", "▁wor"]:
        vocab.setdefault(w, len(vocab))
    merges = [("▁", "h"), ("▁h", "e"), ("▁he", "l"), ("▁hel", "l"), ("▁hell", "o"), ("▁", "w"), ("▁w", "o")]
    merges += [("▁wo", "r")]
    sp = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    t = Tokenizer(sp)
    s = "hello world café 🦀 hello"
    ids = t.encode(s)
    assert t.decode(ids) == s
    pieces, tail = _stream(t, ids)
    assert "".join(pieces) + tail == s and tail == ""
    assert not any("\ufffd" in p for p in pieces)


def test_foreign_template_renders_with_jinja_and_is_saved(tmp_path):
    tok = train_bpe(["hello world"] * 10, 300)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    tok.save(tmp_path)
    back = Tokenizer.from_file(tmp_path)
    assert back.render_chat([{"role": "user", "content": "hi"}]) == "[user]hi"
