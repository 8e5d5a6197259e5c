"""The speedrun report: one page that tells a run's whole story (report.md + report.html + report.png).

Inputs are the files the stages wrote (metrics.jsonl of each training run, the data stage markers) and a
summary dict the speedrun assembles (eval scores, quantization, ablation, a sample completion, commands).
The HTML embeds its PNGs so it can be mailed around as one file.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path

from ..io import atomic_write, pyplot, save_png
from ..train.plot import plot_training


def plot_bars(groups: dict[str, dict[str, float]], path: Path, title: str) -> None:
    """Side-by-side bars: one panel per metric, one bar per group (fp32 vs int4, quality vs unfiltered)."""
    plt = pyplot()
    metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        names = [g for g in groups if m in groups[g]]
        vals = [groups[g][m] for g in names]
        ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=9)
        ax.set_title(m, fontsize=10)
    fig.suptitle(title)
    save_png(fig, path)


# ---- markdown / html --------------------------------------------------------------------------------


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict], cols: list[str] | None = None) -> list[str]:
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return out


def markdown(s: dict, images: dict[str, str]) -> str:
    """The report as markdown; `images` maps a section name to a PNG file name beside the report."""
    L = [
        f"# phiforge speedrun: {s['name']}",
        "",
        f"{datetime.date.today().isoformat()} · budget `{s['budget']}` · {s['seconds']:.0f} s on {s['machine']} · "
        f"teacher: {s['teacher']}",
        "",
        s.get("summary", ""),
        "",
        *([s["post"]["summary"], ""] if s.get("post") else []),
        "## Stages",
        "",
        *table(s["stages"], ["stage", "seconds", "result"]),
        "",
    ]
    if "data" in images:
        L += ["## Data", "", f"![data card]({images['data']})", "", *s.get("data_lines", []), ""]
    L += ["## Training", ""]
    if "training" in images:
        L += [f"![loss curves]({images['training']})", ""]
    L += [*s.get("train_lines", []), "", "## Evaluation", "", *table(s["eval"]), ""]
    if "quant" in images:
        L += ["## fp32 vs int4", "", f"![fp32 vs int4]({images['quant']})", ""]
    if s.get("ablation"):
        L += ["## Data-quality ablation", "", *table(s["ablation"]), "", s.get("ablation_verdict", ""), ""]
        if "ablation" in images:
            L += [f"![ablation]({images['ablation']})", ""]
    if s.get("post"):
        L += _post_markdown(s["post"])
    if s.get("sample"):
        L += ["## A sample completion", "", "```python", s["sample"].rstrip(), "```", ""]
    L += ["## Use the model", "", "```bash", *s.get("commands", []), "```", ""]
    return "\n".join(L)


def _post_markdown(p: dict) -> list[str]:
    """Track 2: the real model post-trained (speedrun/posttrain.py)."""
    L = ["## Post-training track: SmolLM2-135M-Instruct -> PTS -> DPO -> int4", "", *p["lines"], ""]
    if p.get("table"):
        L += [*table(p["table"]), "", *table(p["stages"], ["stage", "seconds"]), ""]
        L += [f"Chat with it: `{p['chat']}`", ""]
    return L


def to_html(md: str, images: dict[str, Path], title: str) -> str:
    """A small markdown subset (headings, tables, code fences, images, paragraphs) as self-contained HTML."""
    body, in_code, in_table = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            body.append("</code></pre>" if in_code else "<pre><code>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if in_table and not line.startswith("|"):
            body.append("</table>")
            in_table = False
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("#"):
            n = len(line) - len(line.lstrip("#"))
            body.append(f"<h{n}>{html.escape(line[n:].strip())}</h{n}>")
        elif line.startswith("![") and "](" in line:
            name = line[line.index("](") + 2 : -1]
            src = images.get(name)
            if src is not None and src.is_file():
                b64 = base64.b64encode(src.read_bytes()).decode()
                body.append(f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}"></p>')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
        "pre{background:#f5f5f5;padding:1em;overflow:auto}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write(out_dir: str | Path, s: dict, training: dict[str, list[dict]], data_png: Path | None) -> Path:
    """Write report.md, report.html and the PNGs into out_dir; return the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if data_png is not None and Path(data_png).is_file():
        atomic_write(out / "data_card.png", Path(data_png).read_bytes())
        images["data"] = "data_card.png"
    if any(training.values()):
        plot_training(training, out / "training.png")
        images["training"] = "training.png"
    if s.get("quant_bars"):
        plot_bars(s["quant_bars"], out / "quant.png", "fp32 vs int4 (same weights)")
        images["quant"] = "quant.png"
    if s.get("ablation_bars"):
        plot_bars(
            s["ablation_bars"],
            out / "ablation.png",
            s.get("ablation_title", "same model, same tokens: quality-filtered vs unfiltered"),
        )
        images["ablation"] = "ablation.png"
    md = markdown(s, images)
    atomic_write(out / "report.md", md)
    files = {name: out / name for name in images.values()}
    atomic_write(out / "report.html", to_html(md, files, f"phiforge speedrun: {s['name']}"))
    return out / "report.md"
