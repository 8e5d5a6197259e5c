"""Bad input ends in one clear line naming the file/field/value, before (or instead of) wasted compute."""

import json

import numpy as np
import pytest
import torch

from phiforge.train import RecipeError, TrainDataError, TrainingError, from_dict, pretrain
from phiforge.train import loop as loop_mod
from phiforge.train.checkpoint import list_checkpoints
from train_helpers import recipe, run, write_recipe, write_shards


def _one_line(e):
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_shards(train_data, tmp_path):
    r = recipe(train_data, tmp_path / "run")
    r["phases"][1]["datasets"][1]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(TrainDataError, match=r"dataset nowhere: .*nowhere/index.json: not found") as e:
        pretrain(from_dict(r))
    _one_line(e)


def test_tokenizer_model_vocab_mismatch(train_data, tmp_path):
    r = recipe(train_data, tmp_path / "run")
    r["model_overrides"]["vocab_size"] = 256
    with pytest.raises(TrainDataError, match="tokenizer vocab 512 > model vocab_size 256") as e:
        pretrain(from_dict(r))
    _one_line(e)


def test_shards_from_another_tokenizer(train_data, tmp_path):
    idx = json.loads((train_data["a"] / "index.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in train_data["a"].glob("*.bin"):
        (other / f.name).write_bytes(f.read_bytes())
    (other / "index.json").write_text(json.dumps({**idx, "vocab_size": 1024}))
    r = recipe(train_data, tmp_path / "run")
    r["phases"][0]["datasets"] = [{"path": str(other)}]
    with pytest.raises(
        TrainDataError, match=r"other/index.json: shards have vocab 1024 / eos 0, the tokenizer"
    ):
        pretrain(from_dict(r))


def test_token_id_beyond_vocab(train_data, tmp_path):
    from phiforge.tokenizer import Tokenizer

    tok = Tokenizer.from_file(train_data["tok"])
    bad = write_shards(tmp_path / "bad", tok, ["x = 1\n" * 40] * 20, val_every=5)
    arr = np.fromfile(bad / "train_00000.bin", dtype="<u2")
    arr[:] = 700  # > vocab 512, though index.json claims 512
    arr.tofile(bad / "train_00000.bin")
    r = recipe(train_data, tmp_path / "run", eval_every=0)
    r["phases"][0]["datasets"] = [{"path": str(bad)}]
    with pytest.raises(
        TrainDataError, match=r"bad train tokens \d+\.\.\d+: token id 700 >= model vocab_size 512"
    ):
        pretrain(from_dict(r))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(train_data, tmp_path, monkeypatch):
    real, calls = loop_mod._forward_loss, []

    def poisoned(net, b, device, autocast, objective):
        loss, m = real(net, b, device, autocast, objective)
        calls.append(net.training)
        return (loss * float("nan") if sum(calls) >= 5 else loss), m  # the 5th training step goes bad

    monkeypatch.setattr(loop_mod, "_forward_loss", poisoned)
    with pytest.raises(
        TrainingError,
        match=r"loss is nan at step 5 \(phase p1\); stopped, last good checkpoint: .*step_000003",
    ) as e:
        pretrain(from_dict(recipe(train_data, tmp_path / "run", eval_every=0, save_every=3)))
    _one_line(e)
    assert [p.name for p in list_checkpoints(tmp_path / "run/ckpt")] == ["step_000003"]
    assert all(torch.isfinite(t).all() for t in torch.load(tmp_path / "run/ckpt/step_000003/trainer_state.pt",
               weights_only=True)["optimizer"]["state"][0].values() if isinstance(t, torch.Tensor))  # fmt: skip


def test_cli_errors_are_one_line(train_data, tmp_path):
    r = write_recipe(tmp_path / "r.yaml", {**recipe(train_data, tmp_path / "run"), "learning_rate": 1})
    p = run("train", "--recipe", r)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {r}: unknown field 'learning_rate' (known: name,")
    with pytest.raises(RecipeError, match="seq_len 4096 > model max_position_embeddings 1024"):
        pretrain(from_dict(recipe(train_data, tmp_path / "run", seq_len=4096)))
