"""DPO: preference pairs -> one padded batch of [chosen; rejected] -> sigmoid / IPO loss (+ SFT on chosen).

The definitions are TRL's DPOTrainer (1.x), so its numbers and metric names carry over:
- a sequence's log-probability is the sum over its completion tokens (the prompt carries no loss);
- sigmoid: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), averaged over pairs;
- ipo: ((pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r - 1 / (2 beta))^2, the log-ratios averaged over the
  completion's tokens (TRL's normalisation, confirmed with the IPO authors);
- sft: the mean NLL over all chosen completion tokens of the batch, added with a weight;
- rewards/chosen = beta * (pi_c - ref_c), margins, accuracies = chosen reward > rejected reward.

The reference model's log-probabilities are computed once, before training, by a pass of the initial
model over the data, and stored beside the data keyed by the pair's token ids and the model's weights
(dpo_ref.py); training keeps one model in memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..tokenizer import Tokenizer
from .mixture import TrainDataError
from .sft import read_rows

LOSS_TYPES = ("sigmoid", "ipo")


# `phiforge dpo` without a recipe: TRL's learning rate, constant after no warmup, no mid-run eval or checkpoint
DEFAULTS = {"lr": 1e-6, "warmup_steps": 0, "min_lr_ratio": 0.0, "eval_every": 0, "save_every": 0}


def train_config(init_from, data, out, *, loss_type="sigmoid", beta=0.1, sft_weight=0.0, epochs=1.0,
                 base: dict | None = None, overrides=(), where: str = "dpo"):  # fmt: skip
    """The TrainConfig of one DPO run from `init_from` (an HF-layout dir) on a preference jsonl: `phiforge dpo`
    builds it from its options, the speedrun's post-training track from its budget. `base`: recipe fields
    (default DEFAULTS); `overrides`: key=value strings as --set takes them."""
    from .config import from_dict

    base = dict(DEFAULTS if base is None else base)
    base = dict(base, out=str(out), init_from=str(init_from), name=base.get("name", "dpo"))
    base["phases"] = [
        {"name": "dpo", "kind": "dpo", "data": str(data), "loss_type": loss_type, "beta": beta,
         "sft_weight": sft_weight, "epochs": epochs}
    ]  # fmt: skip
    return from_dict(base, list(overrides), where=where)


def _is_messages(v) -> bool:
    return isinstance(v, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in v)


def read_preferences(path: str | Path) -> list[tuple[str, dict]]:
    """(file:line, row) for each {"prompt", "chosen", "rejected"} row; a bad row is one error naming it."""
    rows = []
    for where, row in read_rows(path, "preference data"):
        if not isinstance(row, dict):
            raise TrainDataError(f"{where}: expected an object with prompt, chosen, rejected")
        _check_preference(row, where)
        rows.append((where, row))
    if not rows:
        raise TrainDataError(f"{path}: no preference rows")
    return rows


def _check_preference(row: dict, where: str) -> None:
    chat = _is_messages(row.get("prompt"))
    for k in ("prompt", "chosen", "rejected"):
        v = row.get(k)
        if v is None:
            raise TrainDataError(f"{where}: missing field {k!r}")
        if chat and not (_is_messages(v) and v):
            raise TrainDataError(f"{where}: field {k!r} must be a non-empty list of messages (prompt is)")
        if not chat and not isinstance(v, str):
            raise TrainDataError(f"{where}: field {k!r} must be a string (prompt is text), got {v!r:.60}")
        if not v:
            raise TrainDataError(f"{where}: field {k!r} is empty")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


IDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def given_ids(row: dict, where: str, vocab_size: int) -> tuple[list[int], list[int], list[int]] | None:
    """The row's own token ids, when it carries all three (PTS pairs: the prompt ends mid-answer and the
    completions are single sampled tokens; re-encoding the text could move that boundary, and no EOS is
    appended because the answer goes on). None when the row has none of them."""
    have = [k for k in IDS if k in row]
    if not have:
        return None
    if len(have) < 3:
        raise TrainDataError(f"{where}: has {', '.join(have)} but not all of {', '.join(IDS)}")
    for k in IDS:
        v = row[k]
        if not isinstance(v, list) or not v or not all(isinstance(t, int) and 0 <= t < vocab_size for t in v):
            raise TrainDataError(f"{where}: field {k!r} must be a non-empty list of token ids < {vocab_size}")
    return row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]


def encode_pair(tok: Tokenizer, row: dict, where: str = "") -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids. Each completion is cut from the encoding of prompt + completion
    where it diverges from the prompt's (BPE may merge across the boundary), as TRL does."""
    try:
        if _is_messages(row["prompt"]):  # rendered by the model's chat template; the template ends with EOS
            p = tok.apply_chat_template(row["prompt"], add_generation_prompt=True)
            c = tok.apply_chat_template(row["prompt"] + row["chosen"])
            r = tok.apply_chat_template(row["prompt"] + row["rejected"])
        else:  # plain text: completions end with EOS so the model learns to stop
            eos = tok.eos_token or ""
            p = tok.encode(row["prompt"], add_special_tokens=True)
            c, r = (
                tok.encode(row["prompt"] + s + ("" if s.endswith(eos) else eos), add_special_tokens=True)
                for s in (row["chosen"], row["rejected"])
            )
    except ValueError as e:  # a bad role or content: name the row
        raise TrainDataError(f"{where}: {e}") from None
    n = min(_common_prefix(p, c), _common_prefix(p, r))
    if n == 0:
        raise TrainDataError(f"{where}: field 'prompt' encodes to no tokens ahead of the completions")
    for k, ids in (("chosen", c), ("rejected", r)):
        if len(ids) == n:
            raise TrainDataError(f"{where}: field {k!r} encodes to no tokens")
    return p[:n], c[n:], r[n:]


@dataclass
class Pairs:
    """Encoded preference pairs, each prompt + completion cut to `max_len` tokens (TRL's keep_start)."""

    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    dropped: int = 0  # pairs whose prompt alone fills max_len: nothing left to learn from
    ref_chosen: torch.Tensor | None = None  # (N,) float64 reference log-probabilities, set by dpo_ref
    ref_rejected: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt)

    def key(self, i: int) -> str:
        """Identity of pair i: its token ids (so a new tokenizer, template or seq_len is a new pair)."""
        ids = json.dumps([self.prompt[i], self.chosen[i], self.rejected[i]], separators=(",", ":"))
        return hashlib.sha256(ids.encode()).hexdigest()[:24]


def load_pairs(tok: Tokenizer, path: str | Path, max_len: int, vocab_size: int) -> Pairs:
    if tok.vocab_size > vocab_size:
        raise TrainDataError(f"tokenizer has {tok.vocab_size} tokens > model vocab_size {vocab_size}")
    out = Pairs([], [], [])
    for where, row in read_preferences(path):
        p, c, r = given_ids(row, where, vocab_size) or encode_pair(tok, row, where)
        if len(p) >= max_len:
            out.dropped += 1
            continue
        out.prompt.append(p)
        out.chosen.append(c[: max_len - len(p)])
        out.rejected.append(r[: max_len - len(p)])
    if not out.prompt:
        raise TrainDataError(f"{path}: every prompt is at least {max_len} tokens long; raise seq_len")
    return out


class DPOBatch(NamedTuple):
    """Model input for n pairs: rows 0..n-1 are prompt + chosen, rows n..2n-1 prompt + rejected. A tuple,
    so the loop moves its tensors to the device like any other Batch."""

    x: torch.Tensor  # (2n, T) input ids, right-padded (causal attention: padding never reaches real tokens)
    y: torch.Tensor  # (2n, T) next-token targets, -100 outside the completion
    ref_chosen: torch.Tensor | None  # (n,)
    ref_rejected: torch.Tensor | None
    sft_scale: float = 1.0  # pairs / chosen tokens of the whole global batch (see dpo_loss)


def collate(pairs: Pairs, rows: list[int] | torch.Tensor, pad_id: int) -> DPOBatch:
    rows = [int(i) for i in rows]
    seqs = [(pairs.prompt[i], pairs.chosen[i]) for i in rows] + [
        (pairs.prompt[i], pairs.rejected[i]) for i in rows
    ]
    T = max(len(p) + len(c) for p, c in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), -100, dtype=torch.long)
    for j, (p, c) in enumerate(seqs):
        ids = torch.tensor(p + c)
        x[j, : len(ids) - 1] = ids[:-1]
        y[j, len(p) - 1 : len(ids) - 1] = ids[len(p) :]  # targets: the completion tokens only
    ref = (None, None)
    if pairs.ref_chosen is not None:
        ref = (pairs.ref_chosen[rows].float(), pairs.ref_rejected[rows].float())
    return DPOBatch(x, y, *ref)


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(rows,) sum of log p(target) over each row's completion tokens (fp32). The model's fused head + loss
    (model/loss.py, per token): no logits for prompt and padding positions, none kept in full."""
    nll = model(x, targets=y, reduction="none")
    return -nll.view(y.shape).sum(1)


def dpo_terms(
    logps: torch.Tensor, b: DPOBatch, beta: float, loss_type: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss, chosen and rejected rewards (beta * log-ratio) for one batch."""
    n = len(b.ref_chosen)
    pc, pr = logps[:n], logps[n:]
    lc, lr = pc - b.ref_chosen, pr - b.ref_rejected
    if loss_type == "sigmoid":
        per_pair = -F.logsigmoid(beta * (lc - lr))
    elif loss_type == "ipo":
        counts = (b.y != -100).sum(1).clamp_min(1)
        per_pair = (lc / counts[:n] - lr / counts[n:] - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
    return per_pair, beta * lc.detach(), beta * lr.detach()


def dpo_loss(
    model, b: DPOBatch, beta: float = 0.1, loss_type: str = "sigmoid", sft_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed loss of this batch's pairs and summed metrics; divided by the global pair count, the loss is
    TRL's (mean over pairs, + sft_weight * mean chosen-token NLL: `b.sft_scale` = pairs / chosen tokens of
    the global batch turns the summed NLL into that mean)."""
    logps = sequence_logps(model, b.x, b.y)
    per_pair, rc, rr = dpo_terms(logps, b, beta, loss_type)
    n = len(rc)
    loss = per_pair.sum()
    if sft_weight:
        loss = loss - sft_weight * b.sft_scale * logps[:n].sum()
    metrics = {
        "rewards/chosen": rc.sum(),
        "rewards/rejected": rr.sum(),
        "rewards/margins": (rc - rr).sum(),
        "rewards/accuracies": (rc > rr).float().sum(),
        "logps/chosen": logps[:n].detach().sum(),
        "logps/rejected": logps[n:].detach().sum(),
    }
    return loss, metrics


def pairs_in(b) -> int:
    """Units of the DPO objective: the preference pairs of a batch (half its rows)."""
    return len(b[0]) // 2


def objective(spec):
    """DPO as the loop's Objective (spec: config.Phase of kind dpo): summed loss and metrics over pairs."""
    from .loop import Objective

    return Objective(
        lambda net, b: dpo_loss(net, DPOBatch(*b), spec.beta, spec.loss_type, spec.sft_weight), pairs_in
    )


def dpo_phase(name: str, pairs: Pairs, spec, n_global: int, seed: int, pad_id: int):
    """A loop phase over `pairs` for spec.epochs: the collator takes n_global pairs a step from a seeded
    per-epoch permutation; the loop divides the DPO objective's sums by that pair count."""
    import functools
    import math

    from .loop import PhaseData

    steps = max(1, math.ceil(spec.epochs * len(pairs) / n_global))

    @functools.lru_cache(maxsize=4)
    def perm(epoch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(pairs), generator=g)

    @functools.lru_cache(maxsize=2)
    def rows(step):
        js = range(step * n_global, (step + 1) * n_global)
        return [int(perm(j // len(pairs))[j % len(pairs)]) for j in js]

    def batch(step, lo, hi):
        scale = n_global / sum(len(pairs.chosen[i]) for i in rows(step))  # TRL: a mean over chosen tokens
        return collate(pairs, rows(step)[lo:hi], pad_id)._replace(sft_scale=scale)

    return PhaseData(name, steps, batch, lambda step: n_global, objective(spec))
