"""DPO data: TRL's preference rows (text or conversational) -> completion-only targets, bad rows named,
reference log-probs computed once and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from phiforge.model import build, get_preset
from phiforge.tokenizer import Tokenizer
from phiforge.train.dist import Dist
from phiforge.train.dpo import collate, encode_pair, load_pairs, read_preferences
from phiforge.train.dpo_ref import attach, cache_path, model_fingerprint
from phiforge.train.mixture import TrainDataError

CHAT = {
    "prompt": [{"role": "user", "content": "What is 2+2?"}],
    "chosen": [{"role": "assistant", "content": "4"}],
    "rejected": [{"role": "assistant", "content": "5"}],
}
TEXT = {"prompt": "def add(a, b):", "chosen": "\n    return a + b", "rejected": "\n    return a - b"}


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok(train_data):
    return Tokenizer.from_file(train_data["tok"])


def test_plain_text_pair_ends_with_eos_and_splits_at_prompt(tok):
    p, c, r = encode_pair(tok, TEXT)
    assert tok.decode(p + c) == TEXT["prompt"] + TEXT["chosen"] + tok.eos_token
    assert tok.decode(p + r) == TEXT["prompt"] + TEXT["rejected"] + tok.eos_token
    assert c[-1] == r[-1] == tok.eos_id


def test_conversational_pair_uses_chat_template(tok):
    p, c, r = encode_pair(tok, CHAT)
    assert p == tok.apply_chat_template(CHAT["prompt"], add_generation_prompt=True)
    assert p + c == tok.apply_chat_template(CHAT["prompt"] + CHAT["chosen"])
    assert tok.decode(c) == "4<|end|>\n" + tok.eos_token


def test_collate_targets_only_completion_tokens(tok, tmp_path):
    pairs = load_pairs(tok, _write(tmp_path / "p.jsonl", [TEXT, CHAT]), 256, tok.vocab_size)
    b = collate(pairs, [0, 1], pad_id=tok.eos_id)
    assert b.x.shape[0] == 4  # chosen rows, then rejected rows
    for j, (i, kind) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        comp = getattr(pairs, kind)[i]
        assert b.y[j][b.y[j] != -100].tolist() == comp
        assert (
            b.x[j, len(pairs.prompt[i]) - 1 : len(pairs.prompt[i]) - 1 + len(comp)].tolist()[1:] == comp[:-1]
        )


def test_truncation_keeps_start_and_drops_prompt_only_rows(tok, tmp_path):
    long = dict(TEXT, prompt="x = 1\n" * 200)
    pairs = load_pairs(tok, _write(tmp_path / "p.jsonl", [TEXT, long]), 16, tok.vocab_size)
    assert len(pairs) == 1 and pairs.dropped == 1
    assert len(pairs.prompt[0]) + len(pairs.chosen[0]) <= 16


def test_rows_with_token_ids_use_them_as_given(tok, tmp_path):
    # a PTS pair: the prompt stops mid-answer, chosen/rejected are one sampled token each, no EOS after them
    p = tok.encode("Q: 12 + 30 = ", add_special_tokens=True)
    four, five = tok.encode("4")[-1], tok.encode("5")[-1]
    pts = dict(TEXT, prompt="Q: 12 + 30 = ", chosen="4", rejected="5")
    pts.update(prompt_ids=p, chosen_ids=[four], rejected_ids=[five])
    pairs = load_pairs(tok, _write(tmp_path / "p.jsonl", [pts, TEXT]), 256, tok.vocab_size)
    assert (pairs.prompt[0], pairs.chosen[0], pairs.rejected[0]) == (p, [four], [five])
    assert pairs.chosen[1][-1] == tok.eos_id  # a text-only row still gets its EOS
    b = collate(pairs, [0], pad_id=tok.eos_id)
    assert b.y[0][b.y[0] != -100].tolist() == [four] and b.y[1][b.y[1] != -100].tolist() == [five]


@pytest.mark.parametrize(
    "row,needle",
    [
        ("{not json", ":2: not valid JSON"),
        ({"prompt": "a", "chosen": "b"}, ":2: missing field 'rejected'"),
        ({"prompt": "a", "chosen": 3, "rejected": "c"}, ":2: field 'chosen' must be a string"),
        ({"prompt": "a", "chosen": "", "rejected": "c"}, ":2: field 'chosen' is empty"),
        (dict(CHAT, rejected="text"), ":2: field 'rejected' must be a non-empty list of messages"),
        (dict(CHAT, chosen=[{"role": "robot", "content": "x"}]), ":2: unknown chat role 'robot'"),
        (dict(TEXT, prompt_ids=[1], chosen_ids=[2]), ":2: has prompt_ids, chosen_ids but not all of"),
        (dict(TEXT, prompt_ids=[1], chosen_ids=[], rejected_ids=[3]), ":2: field 'chosen_ids' must be"),
        (dict(TEXT, prompt_ids=[1], chosen_ids=[2], rejected_ids=[10**9]), ":2: field 'rejected_ids' must"),
    ],
)
def test_bad_rows_name_file_line_and_field(tok, tmp_path, row, needle):
    path = _write(tmp_path / "bad.jsonl", [TEXT, row])
    with pytest.raises(TrainDataError) as e:
        load_pairs(tok, path, 256, tok.vocab_size)
    assert str(e.value).startswith(str(path)) and needle in str(e.value), str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TrainDataError, match="not found"):
        read_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(TrainDataError, match="no preference rows"):
        read_preferences(_write(tmp_path / "e.jsonl", []))


def test_reference_logps_computed_once_and_reused(tok, tmp_path, monkeypatch):
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = build(cfg, seed=0)
    data = _write(tmp_path / "p.jsonl", [TEXT, CHAT])
    pairs = load_pairs(tok, data, 256, cfg.vocab_size)
    path, n = attach(pairs, data, model, 2, tok.eos_id, Dist())
    assert n == 2 and path == cache_path(data, model_fingerprint(model))
    first = pairs.ref_chosen.clone()
    assert (first < 0).all() and (pairs.ref_rejected < 0).all()
    # a re-run reads the file: nothing is computed, the values come back bit for bit
    import phiforge.train.dpo_ref as dpo_ref

    monkeypatch.setattr(dpo_ref, "compute", lambda *a, **k: pytest.fail("recomputed"))
    again = load_pairs(tok, data, 256, cfg.vocab_size)
    assert attach(again, data, model, 2, tok.eos_id, Dist())[1] == 0
    assert torch.equal(again.ref_chosen, first)
    # other weights: another file
    with torch.no_grad():
        model.embed.weight.add_(1e-3)
    assert cache_path(data, model_fingerprint(model)) != path


def test_shipped_example_parses(tok):
    import yaml

    from phiforge.train import from_dict

    root = Path(__file__).resolve().parents[2] / "examples" / "dpo"
    pairs = load_pairs(tok, root / "prefs.jsonl", 256, tok.vocab_size)
    assert len(pairs) == 8 and pairs.dropped == 0
    base = yaml.safe_load((root / "dpo-tiny.yaml").read_text())
    cfg = from_dict(dict(base, phases=[{"name": "dpo", "kind": "dpo", "data": str(root / "prefs.jsonl")}]))
    assert cfg.phases[0].loss_type == "sigmoid" and cfg.phases[0].beta == 0.1
