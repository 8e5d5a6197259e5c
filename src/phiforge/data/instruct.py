"""Instruction reversal: a documented function becomes a (request, answer) pair.

phi-1 fine-tuned on "CodeExercises": a docstring-style task and the function that solves it. The local
corpus already holds thousands of those, written by people: the docstring (plus the signature) becomes the
user's request and the function without its docstring becomes the assistant's answer. Phase 2 of the
speedrun pretrains on train-split pairs rendered through the Phi-3 chat template; SFT uses val-split pairs,
which no pretraining phase has seen (the split is the token shards' hash split of the document id).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from ..io import write_jsonl
from .shards import split_of
from .sources import iter_documents

MIN_DOC_CHARS = 24  # "Return x." teaches nothing as a request
MAX_ANSWER_LINES = 60  # a tiny model's context is 256-512 tokens


def reverse(code: str) -> tuple[str, str] | None:
    """(request, answer) for a single documented top-level function, else None."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(defs) != 1 or len(tree.body) != 1:
        return None
    fn = defs[0]
    doc = ast.get_docstring(fn)
    if not doc or len(doc) < MIN_DOC_CHARS or len(fn.body) < 2 or fn.name.startswith("_"):
        return None
    ds = fn.body[0]  # the docstring expression: cut its lines out of the source
    lines = code.splitlines(keepends=True)
    rest = lines[ds.end_lineno :]
    if lines[ds.lineno - 1][: ds.col_offset].strip():
        return None  # `def f(): """doc"""; x` on one line: leave it alone
    answer = "".join(lines[: ds.lineno - 1] + rest).rstrip() + "\n"
    if answer.count("\n") > MAX_ANSWER_LINES:
        return None
    signature = f"{fn.name}({ast.unparse(fn.args)})"
    request = f"Write a Python function `{signature}`.\n\n{textwrap.dedent(doc).strip()}"
    return request, answer


def messages(request: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]


def build(in_dir: str | Path, out: str | Path, sft_path: str | Path, tokenizer, val_fraction: float) -> dict:
    """Documents -> pretraining docs (train split, chat-rendered jsonl.gz) + SFT conversations (val split)."""
    out, sft_path = Path(out), Path(sft_path)
    out.mkdir(parents=True, exist_ok=True)
    n = {"functions": 0, "pretrain": 0, "sft": 0}
    docs, sft = [], []
    for doc in iter_documents(in_dir):
        if doc.metadata.get("kind") != "function":
            continue
        n["functions"] += 1
        pair = reverse(doc.text)
        if pair is None:
            continue
        conv = messages(*pair)
        if split_of(doc.id, val_fraction) == "val":
            sft.append({"id": doc.id, "messages": conv})
        else:
            text = tokenizer.render_chat(conv).removesuffix(tokenizer.eos_token or "\0")  # shards add EOS
            docs.append(
                {"id": doc.id + "#instruct", "text": text, "metadata": {"source": "instruction-reversal"}}
            )
    write_jsonl(out / "00000.jsonl.gz", docs)
    write_jsonl(sft_path, sft)
    return {**n, "pretrain": len(docs), "sft": len(sft)}
