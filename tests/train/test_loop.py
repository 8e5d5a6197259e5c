import json
from collections import Counter

import pytest
import torch

from phiforge.model import load_model
from phiforge.train import from_dict, pretrain
from phiforge.train.checkpoint import list_checkpoints
from phiforge.train.config import Dataset
from phiforge.train.mixture import Mixture
from train_helpers import recipe


def _losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["type"] == "train"], [r for r in rows if r["type"] == "eval"]


def test_two_phase_pretrain_metrics_and_checkpoints(train_data, tmp_path):
    out = pretrain(from_dict(recipe(train_data, tmp_path / "run", keep_last=2)))
    assert out.name == "step_000010"
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert [r["phase"] for r in train] == ["p1"] * 6 + ["p2"] * 4
    for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens"):
        assert all(isinstance(r[k], (int, float)) for r in train), k
    assert train[-1]["tokens"] == 10 * 4 * 64
    evals = [r for r in rows if r["type"] == "eval"]
    assert [e["step"] for e in evals] == [4, 6, 8, 10]  # every 4 steps + end of each phase
    assert set(evals[0]["val_loss"]) == {"code_a", "code_b"}
    assert all(evals[-1]["val_loss"][k] < evals[0]["val_loss"][k] - 0.05 for k in ("code_a", "code_b"))
    # keep_last=2 of the saves at 3, 6, 9, 10; each is HF layout + tokenizer + trainer state
    assert [p.name for p in list_checkpoints(tmp_path / "run/ckpt")] == ["step_000009", "step_000010"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"} <= {
        p.name for p in out.iterdir()
    }
    assert not list((tmp_path / "run/ckpt").glob(".*tmp"))
    m = load_model(out)
    assert m.cfg.vocab_size == 512 and m.cfg.hidden_size == 64


def test_grad_accumulation_matches_bigger_batch(train_data, tmp_path):
    base = dict(eval_every=0, save_every=0)
    pretrain(from_dict(recipe(train_data, tmp_path / "a", micro_batch=4, grad_accum=1, **base)))
    pretrain(from_dict(recipe(train_data, tmp_path / "b", micro_batch=2, grad_accum=2, **base)))
    pretrain(
        from_dict(recipe(train_data, tmp_path / "c", micro_batch=4, activation_checkpointing=True, **base))
    )
    a, b, c = (_losses(tmp_path / x)[0] for x in "abc")
    assert len(a) == 10
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert a == c  # recomputation changes memory, not numbers


def test_mixture_follows_weights_and_is_stateless(train_data):
    ds = [Dataset(str(train_data["a"]), 0.25), Dataset(str(train_data["b"]), 0.75)]
    mix = Mixture(ds, 64, 512, seed=3, phase=1)
    counts = Counter(k for s in range(200) for k, _ in mix.plan(s, 16))
    assert abs(counts[1] / 3200 - 0.75) < 0.03
    assert mix.plan(17, 16) == Mixture(ds, 64, 512, seed=3, phase=1).plan(17, 16)
    x = mix.batch(17, 16, 4, 8)
    assert x.shape == (4, 65) and x.dtype == torch.int64
    assert torch.equal(
        x, mix.batch(17, 16, 0, 16)[4:8]
    )  # a rank's slice == the same rows of the global batch


def test_bf16_autocast_runs_close_to_fp32(train_data, tmp_path):
    base = dict(eval_every=0, save_every=0)
    pretrain(from_dict(recipe(train_data, tmp_path / "fp32", **base)))
    pretrain(from_dict(recipe(train_data, tmp_path / "bf16", dtype="bf16", **base)))
    a, b = _losses(tmp_path / "fp32")[0], _losses(tmp_path / "bf16")[0]
    assert a != b and a == pytest.approx(b, abs=0.05)  # bf16 matmuls, fp32 weights and optimizer
    assert load_model(tmp_path / "bf16/ckpt/step_000010").embed.weight.dtype == torch.float32


def test_the_phase_brings_its_loss(train_data, tmp_path):
    """The loop trains and validates whatever Objective a phase carries: a loss that is twice the LM loss
    (plus a metric, summed like the loss) logs twice the LM numbers at step 1 and in validation, and the
    metric as a mean over the global batch's units, with no change to the loop."""
    from phiforge.model import build, get_preset
    from phiforge.train.dist import setup
    from phiforge.train.loop import LM, Objective, PhaseData, lm_loss, target_tokens, train

    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 512, (8, 33), generator=g)

    def collate(step, lo, hi):
        x = rows[step * 4 + lo : step * 4 + hi]  # 2 steps of 4 rows
        return x[:, :-1], x[:, 1:], None, None

    def doubled(net, b):
        loss, _ = lm_loss(net, b)
        return 2 * loss, {"lm": float(loss.detach())}

    def run(name, objective):
        cfg = from_dict(recipe(train_data, tmp_path / name, seq_len=32, eval_every=0, save_every=0))
        model = build(get_preset("tiny").replace(vocab_size=512, num_hidden_layers=1), seed=0)
        phase = PhaseData("p", 2, collate, lambda step: 4 * 32, objective)
        train(cfg, model, None, [phase], {"val": [collate(1, 0, 4)]}, setup())
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    plain, twice = run("lm", LM), run("twice", Objective(doubled, target_tokens))
    assert twice[0]["loss"] == pytest.approx(2 * plain[0]["loss"], rel=1e-6)
    assert twice[0]["lm"] == pytest.approx(plain[0]["loss"], rel=1e-6) and "lm" not in plain[0]
    # AdamW is invariant to the loss scale, so both runs reach (nearly) the same weights
    assert twice[-1]["type"] == "eval"
    assert twice[-1]["val_loss"]["val"] == pytest.approx(2 * plain[-1]["val_loss"]["val"], rel=1e-3)


@pytest.mark.parametrize(
    ("scale", "max_norm", "poison"),
    [
        (1.0, 1e6, None),
        (1.0, 0.5, None),
        (1.0, float("inf"), None),
        (1.0, 0.5, float("inf")),
        (1.0, 1e6, float("nan")),
    ],
)
def test_clip_grad_norm_equals_torch(scale, max_norm, poison):
    """loop.clip_grad_norm skips torch's multiply-by-1 when nothing is clipped; otherwise (clipping, an inf or a
    NaN gradient) the gradients and the returned norm are torch's, bit for bit."""
    from phiforge.train.loop import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(7, 5, generator=g) * scale, torch.randn(3, generator=g)]
    if poison is not None:
        grads[1][1] = poison
    ours = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
    ref = [torch.nn.Parameter(torch.zeros_like(x)) for x in grads]
    for p, q, x in zip(ours, ref, grads, strict=True):
        p.grad, q.grad = x.clone(), x.clone()
    no_grad = torch.nn.Parameter(torch.zeros(2))  # skipped, as torch skips it
    got = clip_grad_norm([*ours, no_grad], max_norm)
    want = torch.nn.utils.clip_grad_norm_([*ref, no_grad], max_norm)
    assert torch.equal(got, want) or (got.isnan() and want.isnan())
    for p, q in zip(ours, ref, strict=True):
        assert torch.equal(p.grad.nan_to_num(7.0), q.grad.nan_to_num(7.0))
