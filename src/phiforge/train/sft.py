"""SFT data: conversations -> Phi-3 chat template -> packed rows with an assistant-only loss mask.

Each conversation is rendered exactly as `Tokenizer.apply_chat_template` does (then EOS), encoded once,
and a token is trained on iff it starts inside an assistant message's content or its closing `<|end|>`
(character offsets of the rendered text, so the mask cannot drift from the real template). Short
conversations are packed first-fit into rows of seq_len + 1 tokens; with `doc_mask`, rotary positions
restart per conversation and attention is block-diagonal, so packing changes nothing but speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import JsonlError, read_jsonl
from ..tokenizer import Tokenizer
from .mixture import TrainDataError


def read_rows(path: str | Path, what: str) -> Iterator[tuple[str, object]]:
    """("file:line", row) for each row of a training jsonl (SFT conversations, DPO pairs); a missing file or
    a line that is not JSON is one TrainDataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: {what} file not found")
    try:
        for n, row in read_jsonl(path, numbered=True):
            yield f"{path}:{n}", row
    except JsonlError as e:
        raise TrainDataError(str(e)) from None


def read_conversations(path: str | Path) -> list[list[dict]]:
    convs = []
    for where, row in read_rows(path, "SFT data"):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise TrainDataError(f"{where}: expected an object with a non-empty 'messages' list")
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
            raise TrainDataError(f"{where}: conversation has no assistant message")
        convs.append(msgs)
    if not convs:
        raise TrainDataError(f"{path}: no conversations")
    return convs


def encode_conversation(
    tok: Tokenizer, messages: list[dict], where: str = ""
) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-template rendering (+ EOS) and which of them carry loss."""
    try:
        text = tok.render_chat(messages)  # ends with eos_token (no generation prompt)
    except ValueError as e:
        raise TrainDataError(f"{where}: {e}") from None
    spans, pos = [], 0
    for m in messages:  # re-walk the template to find each assistant content + <|end|>
        if m["role"] == "system" and not m["content"]:
            continue
        head = f"<|{m['role']}|>\n"
        start = pos + len(head)
        end = start + len(m["content"]) + len("<|end|>")
        if m["role"] == "assistant":
            spans.append((start, end))
        pos = end + 1  # the "\n" after <|end|>
    assert text[pos:] == (tok.eos_token or ""), "chat template changed: update encode_conversation"
    spans.append((pos, len(text)))  # train the final EOS too: it ends a generation
    enc = tok.tok.encode(text, add_special_tokens=False)
    mask = [any(a <= s < b for a, b in spans) for s, _ in enc.offsets]
    return enc.ids, mask


@dataclass
class Packed:
    ids: torch.Tensor  # (rows, seq_len + 1) int64
    labels: torch.Tensor  # (rows, seq_len + 1) int64: target ids, -100 where no loss
    doc: torch.Tensor  # (rows, seq_len + 1) int32 conversation number within the row, -1 = padding
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def pack(examples: list[tuple[list[int], list[bool]]], seq_len: int, pad_id: int) -> Packed:
    """First-fit packing of whole examples into rows of seq_len + 1 (longer ones are truncated)."""
    L = seq_len + 1
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    truncated = 0
    for i, (ids, _) in enumerate(examples):
        n = min(len(ids), L)
        truncated += len(ids) > L
        for r, f in enumerate(free):
            if f >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(L - n)
    ids = np.full((len(rows), L), pad_id, dtype=np.int64)
    labels = np.full((len(rows), L), -100, dtype=np.int64)
    doc = np.full((len(rows), L), -1, dtype=np.int32)
    for r, members in enumerate(rows):
        p = 0
        for j, i in enumerate(members):
            t, m = examples[i][0][:L], examples[i][1][:L]
            ids[r, p : p + len(t)] = t
            labels[r, p : p + len(t)] = np.where(m, t, -100)
            doc[r, p : p + len(t)] = j
            p += len(t)
    return Packed(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(doc), truncated)


def build_sft_data(tok: Tokenizer, path: str | Path, seq_len: int, vocab_size: int) -> Packed:
    if tok.vocab_size > vocab_size:
        raise TrainDataError(f"tokenizer has {tok.vocab_size} tokens > model vocab_size {vocab_size}")
    examples = [
        encode_conversation(tok, c, f"{path}:conversation {i + 1}")
        for i, c in enumerate(read_conversations(path))
    ]
    pad = tok.token_to_id(tok.pad_token) if tok.pad_token else tok.eos_id
    return pack(examples, seq_len, pad if pad is not None else 0)


def sft_inputs(p: Packed, rows: torch.Tensor, doc_mask: bool):
    """Model inputs for the given row indices: (x, targets, positions, mask); positions/mask None if not doc_mask."""
    ids, labels, doc = p.ids[rows], p.labels[rows], p.doc[rows]
    x, y = ids[:, :-1], labels[:, 1:].clone()
    d_in, d_out = doc[:, :-1], doc[:, 1:]
    y[d_in != d_out] = -100  # never predict across a conversation boundary
    if not doc_mask:
        return x, y, None, None
    T = x.shape[1]
    same = d_in[:, :, None] == d_in[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (same & causal)[:, None]  # (B, 1, T, T)
    mask |= torch.eye(T, dtype=torch.bool)  # padding rows attend to themselves (no NaN rows)
    # rotary positions restart at 0 for each conversation
    start = torch.zeros_like(d_in, dtype=torch.long)
    change = torch.ones_like(d_in, dtype=torch.bool)
    change[:, 1:] = d_in[:, 1:] != d_in[:, :-1]
    idx = torch.arange(T).expand_as(d_in)
    start = torch.where(change, idx, torch.zeros_like(idx)).cummax(1).values
    positions = idx - start
    return x, y, positions, mask
