"""The synthetic data's section of the data card: funnel (table + plot), diversity, tokens per kind, samples."""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

from ...io import atomic_write, pyplot, save_png
from ..dedup import CodeWordTokenizer
from .verify import FUNNEL


def diversity(texts: list[str], n: int = 3) -> dict:
    """Distinct n-grams over all n-grams (1..n) of the word tokens: 1.0 = no phrase repeated."""
    tok = CodeWordTokenizer()
    out = {}
    for k in range(1, n + 1):
        grams = Counter(
            g for t in texts for g in zip(*(tok.word_tokenize(t)[i:] for i in range(k)), strict=False)
        )
        total = sum(grams.values())
        out[f"distinct_{k}"] = round(len(grams) / total, 4) if total else 0.0
    return out


def tokens_per_kind(docs: list, count=None) -> dict[str, int]:
    """Tokens of the kept documents per kind (`count(text)`: a tokenizer's; default: word tokens)."""
    count = count or (lambda t: len(CodeWordTokenizer().word_tokenize(t)))
    out = Counter()
    for d in docs:
        out[d.metadata["kind"]] += count(d.text)
    return dict(sorted(out.items()))


def card_markdown(result: dict, docs: list, plans: list, png: str, token_label: str = "word tokens") -> str:
    f, per = result["funnel"], result["per_kind"]
    lines = [
        "# Synthetic data card",
        "",
        f"Generated {datetime.date.today().isoformat()} by `phiforge data synth`. Teacher: **{result['teacher']}**.",
        "",
        f"![funnel]({png})",
        "",
        "## Funnel",
        "",
        "| stage | " + " | ".join(["all", *per]) + " |",
        "|---|" + "---:|" * (1 + len(per)),
    ]
    for s in FUNNEL:
        lines.append(f"| {s} | {f[s]} | " + " | ".join(str(per[k].get(s, "")) for k in per) + " |")
    lines += [
        "",
        "Revised: failed first, passed after one self-revision round (verified = passed + revised).",
        "",
    ]
    lines += [
        "Dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(result["dropped"].items()) if v) or "none"),
        "",
    ]
    d = result["diversity"]
    topics = {p.topic for p in plans}
    lines += [
        "## Diversity",
        "",
        f"- distinct 1/2/3-grams: {d['distinct_1']:.3f} / {d['distinct_2']:.3f} / {d['distinct_3']:.3f}",
        f"- topics: {result['topics_kept']} in kept documents, {len(topics)} asked, "
        f"{result['topics_available']} available",
        "",
        "## Tokens per kind",
        "",
        f"| kind | documents | {token_label} |",
        "|---|---:|---:|",
    ]
    for kind, n in result["tokens"].items():
        lines.append(f"| {kind} | {sum(x.metadata['kind'] == kind for x in docs)} | {n:,} |")
    lines += ["", "## Samples", ""]
    for kind in per:
        for doc in [x for x in docs if x.metadata["kind"] == kind][:3]:
            m = doc.metadata
            lines += [f"### {kind}: {m['topic']} (for {m['audience']}; revised: {m['revised']})", "", "````",
                      doc.text.strip()[:1500], "````", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_funnel(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    per = result["per_kind"]
    bottom = [0] * len(FUNNEL)
    for kind, row in per.items():
        vals = [row.get(s, 0) if s != "deduplicated" else 0 for s in FUNNEL]
        ax.bar(FUNNEL, vals, bottom=bottom, label=kind)
        bottom = [a + b for a, b in zip(bottom, vals, strict=True)]
    ax.bar(FUNNEL, [result["funnel"][s] if s == "deduplicated" else 0 for s in FUNNEL], color="gray")
    ax.set_ylabel("requests / documents")
    ax.set_title("synthetic data funnel")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    save_png(fig, path)


def write_card(out: Path, result: dict, docs: list, plans: list, count=None, token_label="word tokens"):
    """OUT/card.md + card.png; adds diversity, topics and tokens to `result` (saved by the caller)."""
    texts = [d.text for d in docs]
    result["diversity"] = diversity(texts)
    result["topics_kept"] = len({d.metadata["topic"] for d in docs})
    result["tokens"] = tokens_per_kind(docs, count)
    plot_funnel(result, out / "card.png")
    return atomic_write(out / "card.md", card_markdown(result, docs, plans, "card.png", token_label))
