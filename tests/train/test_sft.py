import json

import pytest
import torch

from phiforge.model import build, get_preset
from phiforge.tokenizer import Tokenizer
from phiforge.train import TrainConfig, TrainDataError, from_dict, pretrain, sft
from phiforge.train.sft import encode_conversation, pack, sft_inputs
from train_helpers import recipe

CONV = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "def add():\n    return 2 + 3"},
    {"role": "user", "content": "  and times?"},
    {"role": "assistant", "content": " 6\n"},
]


def _convs(n):
    out = []
    for i in range(n):
        a, b = i % 7, i % 5
        out.append([{"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"def f():\n    return {a} + {b}  # {a + b}"}])  # fmt: skip
    return out


def test_mask_is_exactly_assistant_content_end_and_eos(train_data):
    tok = Tokenizer.from_file(train_data["tok"])
    ids, mask = encode_conversation(tok, CONV)
    assert ids == tok.encode(tok.render_chat(CONV))  # the real template, encoded once
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "def add():\n    return 2 + 3<|end|> 6\n<|end|><|endoftext|>"
    assert tok.decode(ids[: mask.index(True)]).endswith("<|assistant|>\n")


def test_packing_with_doc_mask_equals_separate_examples(train_data):
    tok = Tokenizer.from_file(train_data["tok"])
    ex = [encode_conversation(tok, c) for c in _convs(5)]
    p = pack(ex, seq_len=96, pad_id=tok.eos_id)
    assert len(p) < len(ex)  # several conversations share a row
    model = build(get_preset("tiny").replace(vocab_size=512), seed=0).eval()
    with torch.no_grad():
        x, y, pos, mask = sft_inputs(p, torch.arange(len(p)), doc_mask=True)
        packed = float(model(x, positions=pos, mask=mask, targets=y, reduction="sum"))
        alone = 0.0
        for ids, m in ex:  # each conversation on its own: same summed loss on assistant tokens
            t = torch.tensor(ids)
            lab = torch.where(torch.tensor(m), t, -100)
            alone += float(model(t[None, :-1], targets=lab[None, 1:], reduction="sum"))
    assert packed == pytest.approx(alone, rel=1e-5)
    assert int((y != -100).sum()) == sum(sum(m[1:]) for _, m in ex)


def test_pretrain_then_sft_lowers_val_loss(train_data, tmp_path):
    base = pretrain(from_dict(recipe(train_data, tmp_path / "pre", eval_every=0, save_every=0)))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in _convs(48)))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in _convs(60)[48:]))
    cfg = TrainConfig(out=str(tmp_path / "sft"), seq_len=96, micro_batch=4, lr=3e-3, warmup_steps=2,
                      eval_every=4, save_every=0, sft_epochs=3, peak_flops=1e11, progress=False)  # fmt: skip
    out = sft(base, tmp_path / "train.jsonl", cfg, val_data=tmp_path / "val.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "sft/metrics.jsonl").read_text().splitlines()]
    ev = [r["val_loss"]["sft_val"] for r in rows if r["type"] == "eval"]
    assert len(ev) >= 3 and ev[-1] < ev[0] - 0.3, ev
    assert (out / "tokenizer.json").is_file() and (out / "trainer_state.pt").is_file()


def test_sft_bad_input(train_data, tmp_path):
    tok = Tokenizer.from_file(train_data["tok"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    from phiforge.train.sft import build_sft_data

    with pytest.raises(TrainDataError, match=r"bad.jsonl:1: conversation has no assistant message"):
        build_sft_data(tok, bad, 64, 512)
    bad.write_text(
        '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n'
    )
    with pytest.raises(TrainDataError, match=r"conversation 1: unknown chat role 'robot'"):
        build_sft_data(tok, bad, 64, 512)
    bad.write_text("not json\n")
    with pytest.raises(TrainDataError, match=r"bad.jsonl:1: not valid JSON"):
        build_sft_data(tok, bad, 64, 512)
    with pytest.raises(TrainDataError, match="model vocab_size 256"):
        build_sft_data(tok, bad, 64, 256)
