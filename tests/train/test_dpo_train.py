"""`phiforge dpo` through the one training loop: TRL's metrics per step, the loss starts at log 2 (policy =
reference), preferences are learned, kill -9 + --resume repeats the losses exactly, 2-process DDP matches
one process, and `phiforge plot` draws the rewards."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import pytest

from phiforge.model import build, get_preset, save_model
from phiforge.tokenizer import Tokenizer
from phiforge.train import RecipeError, from_dict
from train_helpers import cli, env, run, train_losses

STEPS = 8


@pytest.fixture(scope="module")
def setup(train_data, tmp_path_factory):
    """A random tiny model with the shared tokenizer, and 16 text + chat preference pairs."""
    root = tmp_path_factory.mktemp("dpo")
    tok = Tokenizer.from_file(train_data["tok"])
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                     eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)  # fmt: skip
    save_model(build(cfg, seed=0), root / "model")
    tok.save(root / "model")
    rows = []
    for i in range(8):
        a, b = i + 2, 7 - i
        rows.append(
            {"prompt": f"def f{i}(x):\n    return x +", "chosen": f" {a}\n", "rejected": f" {b} * None\n"}
        )
        rows.append({"prompt": [{"role": "user", "content": f"{a}+{b}?"}],
                     "chosen": [{"role": "assistant", "content": str(a + b)}],
                     "rejected": [{"role": "assistant", "content": "I do not know."}]})  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _args(setup, out, *extra):
    sets = ["micro_batch=4", "seq_len=64", "peak_flops=1e11", "progress=false", "save_every=2"]
    return ["dpo", "--model", setup / "model", "--data", setup / "pairs.jsonl", "--out", out, "--lr", "3e-3",
            "--epochs", "2", *[x for s in sets for x in ("--set", s)], *extra]  # fmt: skip


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(setup):
    p = run(*_args(setup, setup / "ref"))
    assert p.returncode == 0, p.stderr
    assert "reference log-probs computed for 16" in p.stderr.replace("\n", " "), p.stderr
    return setup / "ref"


def test_metrics_and_learning(reference):
    rows = [r for r in _rows(reference) if r["type"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = rows[0], rows[-1]
    for k in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
    ):
        assert all(math.isfinite(r[k]) for r in rows), k
    # step 1: the policy is the reference, so every reward is 0 and the sigmoid loss is log 2
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/margins"]) < 1e-5
    assert last["rewards/margins"] > 0.05 and last["rewards/accuracies"] >= 0.75
    assert last["loss"] < first["loss"] - 0.01


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_rerun_reuses_reference_and_plot_draws_rewards(setup, reference, tmp_path):
    p = run(*_args(setup, tmp_path / "again", "--set", "save_every=0"))
    assert p.returncode == 0, p.stderr
    assert "reference log-probs all reused" in p.stderr.replace("\n", " ")
    assert train_losses(tmp_path / "again") == train_losses(reference)
    p = run("plot", reference)
    assert p.returncode == 0, p.stderr
    assert (reference / "plots" / "rewards.png").stat().st_size > 1000


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_kill9_then_resume_matches(setup, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(*_args(setup, out)), env=env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len(train_losses(out)) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(train_losses(out)) < STEPS
    p = run(*_args(setup, out, "--resume"))
    assert p.returncode == 0, p.stderr
    assert "resuming from" in p.stderr.replace("\n", "")
    assert train_losses(out) == train_losses(reference)  # exactly
    resumed = [r for r in _rows(out) if r["type"] == "train"]
    assert [r["rewards/margins"] for r in resumed] == [r["rewards/margins"] for r in _rows(reference)]


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_ddp_two_processes_match_one(setup, reference, tmp_path):
    p = run(
        *_args(setup, tmp_path / "ddp", "--set", "micro_batch=2", "--set", "save_every=0"),
        nproc=2,
        timeout=240,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _rows(tmp_path / "ddp"), _rows(reference)
    for k in ("loss", "rewards/margins", "rewards/accuracies"):
        assert [r[k] for r in a] == pytest.approx([r[k] for r in b], rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize(
    "phase,needle",
    [
        ({"kind": "dpo"}, "phases[0].data: a dpo phase needs a preference jsonl"),
        (
            {"kind": "dpo", "data": "p.jsonl", "loss_type": "hinge"},
            "loss_type: 'hinge' is not one of sigmoid, ipo",
        ),
        ({"kind": "dpo", "data": "p.jsonl", "beta": 0}, "phases[0].beta: must be > 0"),
        ({"kind": "rl"}, "phases[0].kind: 'rl' is not one of pretrain, dpo"),
    ],
)
def test_recipe_errors(phase, needle):
    with pytest.raises(RecipeError, match=None) as e:
        from_dict({"phases": [dict(phase, name="p")]})
    assert needle in str(e.value), str(e.value)


def test_dpo_after_pretrain_is_refused():
    phases = [{"name": "a", "datasets": ["x"]}, {"name": "b", "kind": "dpo", "data": "p.jsonl"}]
    with pytest.raises(RecipeError, match="cannot follow a pretrain phase"):
        from_dict({"phases": phases})
