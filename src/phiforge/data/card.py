"""The data card: what went in, what each stage removed and why, and what came out (markdown + PNG)."""

from __future__ import annotations

import datetime
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io import atomic_write, pyplot, save_png


def write_card(r) -> tuple[Path, Path]:
    """Write report/data_card.md and report/data_card.png for a finished `pipeline.Run`."""
    out = r.path("card")
    out.mkdir(parents=True, exist_ok=True)
    png = out / "data_card.png"
    plot_card(r.stats, png)
    md = atomic_write(out / "data_card.md", card_markdown(r.stats, asdict(r.cfg), png.name))
    return md, png


def funnel(stats: dict) -> list[tuple[str, int, int, str]]:
    """(stage, docs in, docs out, why documents were removed) for each document stage."""
    raw, ann, flt = stats["raw"], stats["annotated"], stats["filtered"]
    ded, cln = stats["deduped"], stats["clean"]
    skipped = ", ".join(f"{k.removeprefix('skipped_')} {v}" for k, v in raw.get("skipped", {}).items())
    return [
        ("source", raw["docs_out"], raw["docs_out"], f"files skipped: {skipped or 'none'}"),
        ("quality filter", flt["docs_in"], flt["docs_out"], f"classifier score < {flt['min_score']}"),
        (
            "dedup",
            ded["docs_in"],
            ded["docs_out"],
            f"exact {ded['exact_duplicates']}, near (MinHash) {ded['near_duplicates']}",
        ),
        ("decontamination", cln["docs_in"], cln["docs_out"], f"{cln['removed']} matched an eval item"),
    ] + [("(annotation sample)", ann["sampled"], ann["docs_out"], f"{ann['malformed']} malformed answers")]


def card_markdown(stats: dict, cfg: dict, png_name: str) -> str:
    ann, clf, flt = stats["annotated"], stats["classifier"], stats["filtered"]
    ded, cln, sh = stats["deduped"], stats["clean"], stats["shards"]
    m = clf["metrics"]
    lines = [
        "# Data card",
        "",
        f"Generated {datetime.date.today().isoformat()} by `phiforge data run`. Source: `{cfg['source']}`.",
        f"Teacher: **{ann['teacher']}**.",
        "",
        f"![data card]({png_name})",
        "",
        "## Documents per stage",
        "",
        "| stage | in | out | removed | why |",
        "|---|---:|---:|---:|---|",
    ]
    for name, n_in, n_out, why in funnel(stats):
        lines.append(f"| {name} | {n_in:,} | {n_out:,} | {n_in - n_out:,} | {why} |")
    lines += [
        "",
        "## Teacher labels and quality classifier",
        "",
        f"Teacher labels on the sample (score 0..5): {clf['teacher_hist']}.",
        "",
        f"Classifier `{clf['kind']}`, trained on {m['n_train']:,} labels, measured on {m['n_val']:,} held out:",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| Spearman vs teacher | {m['spearman']:.3f} |",
        f"| F1 at score >= 3 | {m['f1_at_3']:.3f} |",
    ]
    for k in ("precision_at_3", "recall_at_3", "mse", "baseline_mse", "positive_rate"):
        if k in m:
            lines.append(f"| {k.replace('_', ' ')} | {m[k]:.3f} |")
    kept = flt["docs_out"] / max(flt["docs_in"], 1)
    lines += [
        "",
        f"Filter: kept {flt['docs_out']:,} of {flt['docs_in']:,} documents ({kept:.1%}) at min score "
        f"{flt['min_score']}.",
        "",
        "## Deduplication and decontamination",
        "",
        f"- Duplicate rate {ded['duplicate_rate']:.2%}: {ded['exact_duplicates']:,} exact and "
        f"{ded['near_duplicates']:,} near duplicates (MinHash) removed.",
        f"- Decontamination ({cfg['decontam_n']}-grams): {cln['removed']:,} documents removed "
        f"{dict(cln.get('by_benchmark', {}))}.",
    ]
    for e in cln.get("removed_docs", [])[:20]:
        lines.append(f'  - `{e["doc_id"]}` matched {e["benchmark"]} `{e["item_id"]}`: "{e["ngram"][:80]}"')
    if len(cln.get("removed_docs", [])) > 20:
        lines.append(f"  - ... all {len(cln['removed_docs'])} in `data/clean/contamination/`")
    lines += [
        "",
        "## Tokens",
        "",
        f"Byte-level BPE, vocab {stats['tokenizer']['vocab_size']:,}.",
        "",
        "| split | documents | tokens |",
        "|---|---:|---:|",
    ]
    for split, v in sh.items():
        lines.append(f"| {split} | {v['docs']:,} | {v['tokens']:,} |")
    return "\n".join(lines) + "\n"


def plot_card(stats: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    rows = funnel(stats)[:-1]
    names = ["source"] + [n for n, *_ in rows[1:]]
    counts = [rows[0][2]] + [out for _, _, out, _ in rows[1:]]
    ax = axes[0]
    ax.bar(names, counts, color="#4c72b0")
    for i, c in enumerate(counts):
        ax.text(i, c, f"{c:,}", ha="center", va="bottom", fontsize=9)
    ax.set_title("documents after each stage")
    ax.tick_params(axis="x", labelrotation=15)

    ax = axes[1]
    flt = stats["filtered"]
    hist = np.asarray(flt["score_hist"])
    edges = np.linspace(0, 5, len(hist) + 1)
    ax.bar(
        edges[:-1], hist, width=edges[1] - edges[0], align="edge", color="#55a868", label="classifier score"
    )
    ax.axvline(flt["min_score"], color="#c44e52", ls="--", label=f"min score {flt['min_score']}")
    ax.set_title(f"quality scores ({stats['classifier']['kind']} classifier)")
    ax.set_xlabel("score")
    ax.legend()

    ax = axes[2]
    sh = stats["shards"]
    ax.bar(list(sh), [v["tokens"] for v in sh.values()], color="#8172b2")
    for i, v in enumerate(sh.values()):
        ax.text(i, v["tokens"], f"{v['tokens']:,}", ha="center", va="bottom", fontsize=9)
    ax.set_title(f"tokens per split (vocab {stats['tokenizer']['vocab_size']:,})")
    save_png(fig, path)
