"""Passkey retrieval (Mohtashami & Jaggi 2023, as LongRoPE and YaRN report it): a random number hidden at a
given depth of a long run of filler, asked for at the end; greedy decoding must produce it.

Prompts are built from token lists (head + filler up to the depth + needle + filler + question), so the
length is exact in the model's own tokens. Two styles: "text" (the usual English filler) and "code" (a
Python filler and an assignment), for models that have only seen code.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..infer.sampling import SamplingParams

STYLES = {
    "text": dict(
        head="There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.\n",
        filler="The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ",
        needle="The pass key is {key}. Remember it. {key} is the pass key. ",
        question="\nWhat is the pass key? The pass key is",
    ),
    "code": dict(
        head="# the value of PASSKEY is defined below; remember it\n",
        filler="x = x + 1\nif x > 10:\n    x = 0\n",
        needle="PASSKEY = {key}\n",
        question="\nassert PASSKEY ==",
    ),
}


def passkey_prompt(tok, length: int, depth: float, key: int, style: str = "text") -> list[int]:
    """Token ids of one prompt of exactly `length` tokens with `key` at `depth` (0 = start, 1 = end)."""
    if style not in STYLES:
        raise ValueError(f"passkey style {style!r}: expected one of {', '.join(STYLES)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth {depth}: must be in [0, 1]")
    s = STYLES[style]
    head, needle = tok.encode(s["head"]), tok.encode(s["needle"].format(key=key))
    question, filler = tok.encode(s["question"]), tok.encode(s["filler"])
    room = length - len(head) - len(needle) - len(question)
    if room < 0:
        raise ValueError(f"passkey length {length}: too short for the prompt's {length - room} fixed tokens")
    fill = (filler * (room // len(filler) + 1))[:room]
    at = int(round(depth * room))
    return head + fill[:at] + needle + fill[at:] + question


def passkey_trial(engine, length: int, depth: float, key: int, style: str = "text") -> dict:
    """One prompt of `length` tokens (prompt plus a few greedy tokens) with `key` at `depth`:
    {length, depth, key, answer, correct, prefill_s}; correct = the key appears in the continuation."""
    n = len(engine.tokenizer.encode(f" {key}")) + 2
    ids = passkey_prompt(engine.tokenizer, length - n, depth, key, style)
    res = engine.generate([ids], SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))[0]
    text = engine.tokenizer.decode(res.tokens)
    return dict(length=length, depth=depth, key=key, answer=text, correct=str(key) in text,
                prefill_s=round(res.prefill_s, 2))  # fmt: skip


def passkey_eval(
    engine,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int = 1,
    style: str = "text",
    seed: int = 0,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One row per (length, depth, trial) (passkey_trial); keys are 5-digit numbers drawn from `seed`."""
    rng = random.Random(seed)
    rows = []
    for length in lengths:
        for depth in depths:
            for _ in range(trials):
                row = passkey_trial(engine, length, depth, rng.randrange(10_000, 100_000), style)
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows


def accuracy(rows: list[dict]) -> dict[int, float]:
    """Fraction correct per length."""
    out: dict[int, list[bool]] = {}
    for r in rows:
        out.setdefault(r["length"], []).append(r["correct"])
    return {k: sum(v) / len(v) for k, v in out.items()}
