"""Parity with TRL: on the same weights and pairs, phiforge's DPO loss, gradients and metrics equal those of
the real `trl.DPOTrainer.compute_loss` (its precomputed-reference path, which phiforge's design matches)."""

from __future__ import annotations

import pytest
import torch

from phiforge.model import build, get_preset, save_model
from phiforge.model.hf import hf_state_dict
from phiforge.train.dist import Dist
from phiforge.train.dpo import Pairs, collate, dpo_loss
from phiforge.train.dpo_ref import compute

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
transformers.logging.set_verbosity_error()

TOL = 1e-5
CFG = get_preset("tiny").replace(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2,
)  # fmt: skip


def _pairs() -> Pairs:
    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, CFG.vocab_size, (n,), generator=g).tolist()  # noqa: E731
    lens = [(5, 4, 2), (3, 1, 6), (7, 3, 3)]  # prompt, chosen, rejected: unequal, so padding is exercised
    return Pairs(*(list(x) for x in zip(*[(ids(p), ids(c), ids(r)) for p, c, r in lens], strict=True)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference, policy, HF copy of the policy): the policy is the reference moved off by noise."""
    torch.manual_seed(0)
    ref = build(CFG, seed=0)
    policy = build(CFG, seed=0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = tmp_path_factory.mktemp("dpo_parity")
    save_model(policy, d / "policy")
    return ref, policy, d


def _trl_trainer(hf, d, loss_type: str, sft_weight: float):
    from tokenizers import Tokenizer, models, pre_tokenizers

    wl = Tokenizer(models.WordLevel({f"t{i}": i for i in range(CFG.vocab_size)}, unk_token="t1"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="t0", pad_token="t0")
    ds = datasets.Dataset.from_list([{"prompt": "t3 t4", "chosen": " t5", "rejected": " t6"}])
    losses, weights = [loss_type], None
    if sft_weight:
        losses, weights = [loss_type, "sft"], [1.0, sft_weight]
    args = trl.DPOConfig(
        output_dir=str(d / "trl"), report_to=[], use_cpu=True, beta=0.1, loss_type=losses, loss_weights=weights,
        precompute_ref_log_probs=True, gradient_checkpointing=False,
    )  # fmt: skip
    return trl.DPOTrainer(model=hf, args=args, train_dataset=ds, processing_class=tok)


def _hf_grads(model) -> dict[str, torch.Tensor]:
    g = build(CFG, device="meta")
    g.load_state_dict({k: p.grad for k, p in model.named_parameters()}, strict=False, assign=True)
    g.lm_head.weight = g.embed.weight  # tied in CFG
    return hf_state_dict(g)


@pytest.mark.parametrize("loss_type,sft_weight", [("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", 0.5)])
def test_loss_and_grads_equal_trl(models, loss_type, sft_weight):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    ref, policy, d = models
    pairs = _pairs()
    n = len(pairs)
    ref_lp = compute(ref, pairs, list(range(n)), 2, 0, Dist().device)
    pairs.ref_chosen = torch.tensor([ref_lp[pairs.key(i)][0] for i in range(n)], dtype=torch.float64)
    pairs.ref_rejected = torch.tensor([ref_lp[pairs.key(i)][1] for i in range(n)], dtype=torch.float64)

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d / "policy"), dtype=torch.float32)
    trainer = _trl_trainer(hf, d, loss_type, sft_weight)
    rows = [{"prompt_ids": pairs.prompt[i], "chosen_ids": pairs.chosen[i], "rejected_ids": pairs.rejected[i],
             "ref_chosen_logps": float(pairs.ref_chosen[i]), "ref_rejected_logps": float(pairs.ref_rejected[i])}
            for i in range(n)]  # fmt: skip
    inputs = DataCollatorForPreference(pad_token_id=0)(rows)
    hf.train()
    hf.zero_grad()
    want = trainer.compute_loss(hf, inputs)
    want.backward()
    want_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    policy.zero_grad()
    b = collate(pairs, range(n), pad_id=0)
    b = b._replace(sft_scale=n / int((b.y[:n] != -100).sum()))
    total, metrics = dpo_loss(policy, b, beta=0.1, loss_type=loss_type, sft_weight=sft_weight)
    got = total / n
    got.backward()

    assert abs(got.item() - want.item()) < TOL, (got.item(), want.item())
    theirs = {k: p.grad for k, p in hf.named_parameters()}
    for name, g in _hf_grads(policy).items():
        t = theirs[name]
        assert (g - t).abs().max() <= TOL * max(1.0, float(t.abs().max())), name
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert abs(float(metrics[k]) / n - want_metrics[k]) < TOL, k


def test_reference_logps_equal_trl_policy_at_start(models):
    """The stored reference is the initial model's summed completion log-probs, as TRL precomputes them."""
    ref, _, d = models
    pairs = _pairs()
    save_model(ref, d / "ref")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d / "ref"), dtype=torch.float32).eval()
    lp = compute(ref, pairs, [0, 1, 2], 3, 0, Dist().device)
    b = collate(pairs, [0, 1, 2], pad_id=0)
    with torch.no_grad():
        logits = hf(b.x).logits.float().log_softmax(-1)
    y = b.y.clamp_min(0)
    want = (logits.gather(-1, y[..., None])[..., 0] * (b.y != -100)).sum(1)
    got = torch.tensor([lp[pairs.key(i)] for i in range(3)], dtype=torch.float64).T.flatten()
    assert torch.allclose(got, want.double(), atol=TOL)
