import gzip
import json

from datatrove.pipeline.writers import JsonlWriter

from phiforge.data.instruct import build, reverse
from phiforge.data.shards import split_of
from phiforge.data.sources import documents_from_file
from phiforge.tokenizer import train_bpe

FN = '''def clamp(x, lo=0, hi=1):
    """Limit x to the closed interval [lo, hi] and return it."""
    if x < lo:
        return lo
    return min(x, hi)
'''


def test_reverse_turns_docstring_into_request_and_strips_it_from_the_answer():
    request, answer = reverse(FN)
    assert request.startswith("Write a Python function `clamp(x, lo=0, hi=1)`.")
    assert "Limit x to the closed interval [lo, hi]" in request
    assert '"""' not in answer and answer.startswith("def clamp(x, lo=0, hi=1):\n    if x < lo:")
    compile(answer, "answer", "exec")  # still valid Python


def test_reverse_refuses_what_teaches_nothing():
    assert reverse("def f(x):\n    return x\n") is None  # no docstring
    assert reverse('def f(x):\n    """Short."""\n    return x\n') is None  # docstring too short
    assert reverse('def _p(x):\n    """A private helper with a long docstring."""\n    return x\n') is None
    assert reverse('class A:\n    """A class with a docstring of some length."""\n    x = 1\n') is None
    assert reverse("def broken(:\n") is None


def test_build_splits_pretraining_pairs_from_held_out_sft(tmp_path):
    texts = [FN.replace("clamp", f"clamp{i}") for i in range(60)]
    src = "".join(texts)
    docs = documents_from_file("stdlib", tmp_path, tmp_path / "mod.py", src)
    assert len(docs) == 60 and all(d.metadata["kind"] == "function" for d in docs)
    with JsonlWriter(str(tmp_path / "in"), output_filename="0.jsonl.gz") as w:
        for d in docs:
            w.write(d)
    tok = train_bpe([src] * 3, vocab_size=400)
    n = build(tmp_path / "in", tmp_path / "out", tmp_path / "sft.jsonl", tok, val_fraction=0.3)
    assert n["functions"] == 60 and n["pretrain"] + n["sft"] == 60 and 5 < n["sft"] < 35
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == n["sft"]
    assert all(split_of(r["id"], 0.3) == "val" for r in sft)  # held out exactly as the shards hold out val
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    with gzip.open(tmp_path / "out" / "00000.jsonl.gz", "rt") as f:
        pre = [json.loads(line) for line in f]
    assert len(pre) == n["pretrain"]
    assert pre[0]["text"].startswith("<|user|>\nWrite a Python function") and pre[0]["text"].endswith(
        "<|end|>\n"
    )
    held = {r["id"] for r in sft}
    assert not held & {r["id"].removesuffix("#instruct") for r in pre}
