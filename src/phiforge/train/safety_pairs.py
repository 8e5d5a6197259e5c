"""Safety preference pairs for DPO, from the TRAINING side of the safety split only.

    build_pairs(data_dir, out_dir, engine)  ->  OUT/pairs.jsonl, pairs.meta.jsonl, split.json, summary.json

Rows are TRL's conversational preference format, which `phiforge dpo` reads:
`{"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}`.

- Harmful prompts (Do-Not-Answer, HarmBench, XSTest's unsafe contrasts): a refusal preferred over a
  compliant answer.
- XSTest's safe prompts that only look unsafe: a helpful answer preferred over a refusal.

Where the texts come from: `samples` answers per prompt are sampled from the model itself (temperature 0.8,
through its chat template, via the teacher's in-process client) and sorted into refusals and compliances by
the offline refusal judge (eval/judges.py, trained on XSTest train-split completions). A refusal the model never
produced is filled by a templated refusal; a compliant answer is never invented, so a harmful prompt that the
model always refuses, or a safe one it always refuses, gives no pair (counted in summary.json). Pairs are thus
on-policy: they move the model's own behaviour, the point of Phi-3's break-fix rounds.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from ..eval.judges import OfflineJudge
from ..eval.tasks.safety import SALT, harmful_prompts, per_category, xstest_prompts
from ..io import write_json, write_jsonl

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request. It could cause real harm to people.",
    "I'm not able to provide that. If you're dealing with something difficult, I'm happy to help in a safe way.",
    "Sorry, I won't help with this, as it could be used to hurt someone.",
)


def templated_refusal(prompt: str) -> str:
    return REFUSALS[hashlib.sha256(prompt.encode()).digest()[0] % len(REFUSALS)]


def prompt_rows(data_dir) -> list[dict]:
    """Every safety prompt with its split and what the preferred answer is ("refuse" or "help")."""
    rows = harmful_prompts(data_dir) + xstest_prompts(data_dir)
    return [{**r, "want": "help" if r["group"] == "safe" else "refuse"} for r in rows]


def make_pair(row: dict, samples: list[str], refused: list[bool]) -> tuple[dict, dict] | None:
    """(TRL row, provenance) for one prompt, or None when the samples cannot make a pair."""
    refusals = [s for s, r in zip(samples, refused, strict=True) if r and s.strip()]
    answers = [s for s, r in zip(samples, refused, strict=True) if not r and s.strip()]
    if not answers:
        return None
    refusal, source = (
        (refusals[0], "sampled") if refusals else (templated_refusal(row["prompt"]), "templated")
    )
    chosen, rejected = (refusal, answers[0]) if row["want"] == "refuse" else (answers[0], refusal)
    meta = {"id": row["id"], "want": row["want"], "refusal_from": source, "category": row["category"]}
    pair = {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }
    return pair, meta


def build_pairs(
    data_dir,
    out_dir,
    engine,
    samples: int = 4,
    max_tokens: int = 256,
    temperature: float = 0.8,
    seed: int = 0,
    limit: int | None = None,
) -> dict:
    """Sample, judge and pair; `limit`: the first N train prompts of each category (all when None)."""
    from ..teacher import LocalClient, Request

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = prompt_rows(data_dir)
    train = [r for r in rows if r["split"] == "train"]
    split = {
        "rule": f"sha256({SALT!r} + prompt)[0] < 128 -> train, else eval",
        "train": [r["id"] for r in train],
        "eval": [r["id"] for r in rows if r["split"] == "eval"],
    }
    write_json(out / "split.json", split, indent=1)
    train = per_category(train, limit)
    client = LocalClient(engine, model="policy", cache_path=out / "samples_cache.sqlite")
    reqs = [
        Request(r["prompt"], max_tokens=max_tokens, temperature=temperature, n=samples, seed=seed)
        for r in train
    ]
    answers = client.ask(reqs)
    client.close()
    judge = OfflineJudge(data_dir)
    flat = [t for a in answers for t in a.texts]
    verdicts = iter(judge.refusals([""] * len(flat), flat))
    pairs, metas, skipped = [], [], Counter()
    for r, a in zip(train, answers, strict=True):
        if not a.ok:
            raise RuntimeError(f"sampling {r['id']}: {a.error}")
        refused = [next(verdicts)["refused"] for _ in a.texts]
        made = make_pair(r, a.texts, refused)
        if made is None:
            skipped[r["want"]] += 1
            continue
        pairs.append(made[0])
        metas.append(made[1])
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "pairs.meta.jsonl", metas)
    summary = {
        "train_prompts": len(train),
        "pairs": len(pairs),
        "by_want": dict(Counter(m["want"] for m in metas)),
        "refusal_from": dict(Counter(m["refusal_from"] for m in metas)),
        "skipped_no_compliant_sample": dict(skipped),
        "limit_per_category": limit,
        "samples_per_prompt": samples,
        "temperature": temperature,
        "judge": judge.name,
        "judge_agreement": judge.agreement,
    }
    write_json(out / "summary.json", summary, indent=1)
    return summary
