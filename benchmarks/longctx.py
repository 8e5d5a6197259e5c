"""Long context (issue 17): the speedrun's tiny model extended 8x (256 -> 2048) by PI, YaRN and LongRoPE at
equal fine-tuning tokens, measured by perplexity vs length on held-out long documents and passkey retrieval;
and SmolLM2-135M-Instruct (trained to 8,192) extended 2x to 16,384 by factors alone, passkey before/after.

    python benchmarks/longctx.py --size smoke|default [--part tiny|smollm2|all] [--threads 1]

Held-out documents: the .py files of one stdlib package (HELDOUT) concatenated, minus any file the
speedrun's harvest selected (its deterministic list at the budget's byte cap), so the tiny model never
trained on them. The first windows feed the LongRoPE search; perplexity is measured on the rest.
The tiny base is the speedrun pretrain checkpoint (the smoke speedrun is run if `--run` has none),
optionally trained further at 256 tokens (`base_tokens`), so that it has something to lose at long range.
Writes <out>/results.json, docs/longctx.png and prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from phiforge.eval.passkey import accuracy, passkey_eval, passkey_trial
from phiforge.infer.engine import Engine
from phiforge.infer.load import load
from phiforge.train import longrope as lr

HELDOUT = "email"
METHODS = ("pi", "yarn", "longrope")


@dataclass(frozen=True)
class Size:
    length: int  # tiny: target length (orig 256)
    base_tokens: int  # more pretraining of the speedrun checkpoint at 256 tokens (0: as is)
    finetune_steps: int  # at `length`, one sequence per step: equal tokens for every method
    population: int
    generations: int
    eval_windows: int  # per length
    passkey_lengths: tuple[int, ...]
    passkey_trials: int
    smol_length: int
    smol_population: int  # SmolLM2 search: candidates (the PI/YaRN/NTK seeds first, then mutations)
    smol_passkey: tuple[str, ...]  # SmolLM2 variants measured (passkey, perplexity), in this order


SIZES = {
    "smoke": Size(512, 0, 2, 4, 1, 2, (256, 512), 1, 16384, 3, ()),
    # SmolLM2 at 16k: one forward is ~5 CPU-minutes on one thread (~13 TFLOP, two thirds of it attention),
    # 7-9 min wall on the shared VM; the 3-seed search took 50 min wall there (RESULTS.md)
    "default": Size(
        2048, 500_000, 40, 12, 5, 4, (256, 1024, 2048), 2, 16384, 3, ("none", "longrope", "yarn")
    ),
}
DEPTHS = (0.1, 0.5, 0.9)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def heldout_ids(tok, max_bytes: int | None) -> list[int]:
    """HELDOUT's files minus those the speedrun harvest at `max_bytes` selected (None: exclude nothing)."""
    from phiforge.data.sources import list_python_files

    trained = {p.resolve() for _, _, p in list_python_files(max_bytes)} if max_bytes else set()
    return tok.encode(lr.package_text(HELDOUT, exclude=trained))


def tiny_base(run: Path, out: Path, size: Size) -> Path:
    """The speedrun's pretrained tiny model (run the smoke speedrun first if there is none)."""
    stage = run / "stages" / "pretrain.json"
    if not stage.is_file():
        from phiforge.speedrun import config_from
        from phiforge.speedrun import run as speedrun

        log(f"no speedrun at {run}: running the smoke speedrun")
        speedrun(config_from(out=str(run), budget="smoke"))
    ckpt = Path(json.loads(stage.read_text())["result"]["ckpt"])
    if not size.base_tokens:
        return ckpt
    from phiforge.train import Dataset, Phase, TrainConfig, pretrain

    cfg = TrainConfig(name="base", out=str(out / "base"), init_from=str(ckpt), seq_len=256, micro_batch=8,
                      phases=[Phase("base-256", size.base_tokens, [Dataset(str(run / "shards_all"))])],
                      lr=2e-3, warmup_steps=10, eval_every=0, eval_tokens=16384, save_every=100, keep_last=1)  # fmt: skip
    return pretrain(cfg, resume=True, quiet=True)


def ppl_curve(model, ids: list[int], lengths, n: int) -> dict[int, float]:
    return {T: lr.perplexity(model, lr.long_windows(ids, T, n)) for T in lengths}


def run_tiny(args, size: Size) -> dict:
    out = Path(args.out)
    base = tiny_base(Path(args.run), out, size)
    model, tok = load(base, dtype=torch.float32)
    from phiforge.speedrun.run import BUDGETS

    ids = heldout_ids(tok, BUDGETS["smoke"].max_bytes)
    orig, L = 256, size.length
    n_search = 2 * (L + 1) + 64  # the search's windows (+ slack: decode/encode may merge tokens)
    search_ids, eval_ids = ids[:n_search], ids[n_search:]
    lengths = [T for T in (256, 512, 1024, 2048, 4096) if T <= L]
    log(f"base {base}: held-out {HELDOUT}: {len(ids):,} tokens ({len(eval_ids):,} for perplexity)")
    res = {
        "base": str(base),
        "heldout_tokens": len(ids),
        "length": L,
        "orig": orig,
        "curves": {},
        "passkey": {},
    }
    set_none = lambda m: lr.set_rope(m, m.cfg.replace(max_position_embeddings=L))  # noqa: E731
    res["curves"]["none"] = ppl_curve(set_none(model), eval_ids, lengths, size.eval_windows)
    res["passkey"]["none"] = passkey(Engine(model, tok), size.passkey_lengths, size.passkey_trials, "code")
    text = tok.decode(search_ids)
    for method in METHODS:
        t = time.time()
        sc = lr.SearchConfig(population=size.population, generations=size.generations)
        rep = lr.extend(base, out / method, L, text, method, orig, sc, docs=2,
                        finetune_tokens=size.finetune_steps * L, shards=[str(Path(args.run) / "shards_all")],
                        log=lambda s, m=method: log(f"{m}: {s}"))  # fmt: skip
        for tag, path in (("", out / method / "extended"), ("+ft", rep["model"])):
            m, _ = load(path, dtype=torch.float32)
            res["curves"][method + tag] = ppl_curve(m, eval_ids, lengths, size.eval_windows)
            res["passkey"][method + tag] = passkey(
                Engine(m, tok), size.passkey_lengths, size.passkey_trials, "code"
            )
        res[method] = {"seconds": round(time.time() - t, 1), "rope_scaling": rep["rope_scaling"],
                       "search": rep.get("search")}  # fmt: skip
        log(f"{method}: {res['curves'][method + '+ft']} in {res[method]['seconds']} s")
    return res


def passkey(engine, lengths, trials, style) -> dict:
    rows = passkey_eval(engine, lengths, DEPTHS, trials, style)
    return {str(k): v for k, v in accuracy(rows).items()}


def smol_tasks(size: Size, variants: tuple[str, ...], orig: int) -> list[tuple]:
    """The SmolLM2 measurements in the order they run, so that a cut run has comparable numbers for every
    variant: per trial, passkey at depth 0.5 at the target then the original length, (first trial only)
    perplexity at the target, then the other depths. Keys: (kind, variant, length, depth, trial)."""
    tasks = []
    for trial in range(size.passkey_trials):
        for depths in ((0.5,), tuple(d for d in DEPTHS if d != 0.5)):
            for length in (size.smol_length, orig):
                tasks += [("passkey", v, length, d, trial) for d in depths for v in variants]
            if trial == 0 and depths == (0.5,):
                tasks += [("ppl", v, size.smol_length, None, None) for v in variants]
    return tasks


def run_smollm2(args, size: Size) -> dict:
    """SmolLM2 8192 -> 16384 by factors alone: "none" (positions past 8192 never seen), "longrope" (long
    factors searched by perplexity at 16k among the PI/YaRN/NTK seeds, smol_population candidates, no
    generations: each is a 16k forward; short factors 1) and "yarn" (native). Passkey (text style) at the
    target and original lengths x DEPTHS x passkey_trials, the same key for every variant; perplexity at the
    target on one held-out window. Each result is appended to <out>/smollm2/trials.jsonl as it comes, and
    a re-run skips what is there (the search too, once <out>/smollm2/extended exists)."""
    out = Path(args.out) / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    L = size.smol_length
    model, tok = load("smollm2-135m-instruct", dtype=torch.float32)
    base_cfg, orig = model.cfg, model.cfg.max_position_embeddings
    ids = heldout_ids(tok, None)  # SmolLM2's training data is not known: nothing to exclude
    res: dict = {"length": L, "orig": orig}
    if "longrope" in size.smol_passkey:
        if not (out / "extended" / "config.json").is_file():
            t = time.time()
            sc = lr.SearchConfig(population=size.smol_population, generations=0)
            rep = lr.extend("smollm2-135m-instruct", out, L, tok.decode(ids[: L + 256]), "longrope", sc=sc,
                            docs=1, search_short=False, log=lambda s: log(f"smollm2 longrope: {s}"))  # fmt: skip
            (out / "search.json").write_text(json.dumps({"seconds": round(time.time() - t, 1), **rep}))
        rs = json.loads((out / "extended" / "config.json").read_text())["rope_scaling"]
        long_cfg = lr.extended_config(base_cfg, L, orig, "longrope", rs["long_factor"], rs["short_factor"])
    configs = {
        "none": lambda: base_cfg.replace(max_position_embeddings=L),
        "longrope": lambda: long_cfg,
        "yarn": lambda: lr.extended_config(base_cfg, L, orig, "yarn"),
    }
    path = out / "trials.jsonl"
    done = (
        {tuple(json.loads(line)["task"]) for line in path.read_text().splitlines()}
        if path.is_file()
        else set()
    )
    window = lr.long_windows(ids[L + 256 :], L, 1)  # after the search's text
    for task in smol_tasks(size, size.smol_passkey, orig):
        if task in done:
            continue
        kind, variant, length, depth, trial = task
        engine = Engine(lr.set_rope(model, configs[variant]()), tok, prefill_chunk=args.prefill_chunk)
        t, cpu = time.time(), time.process_time()
        if kind == "ppl":
            row = {"ppl": lr.perplexity(engine.model, window)}
        else:
            key = random.Random(f"{length}/{depth}/{trial}").randrange(10_000, 100_000)
            row = passkey_trial(engine, length, depth, key, "text")
        row = {
            "task": list(task),
            **row,
            "seconds": round(time.time() - t, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
        }
        with path.open("a") as f:  # one line per result: a cut run keeps every finished one
            f.write(json.dumps(row) + "\n")
        log(f"smollm2 {task}: {row}")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    res["passkey"], res["ppl"] = {}, {}
    for r in rows:
        kind, variant, length = r["task"][:3]
        if kind == "ppl":
            res["ppl"][variant] = r["ppl"]
        else:
            res["passkey"].setdefault(variant, {}).setdefault(str(length), []).append(r["correct"])
    res["passkey"] = {v: {n: f"{sum(c)}/{len(c)}" for n, c in d.items()} for v, d in res["passkey"].items()}
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"none": "black", "pi": "tab:orange", "yarn": "tab:blue", "longrope": "tab:green"}
    for name, curve in res["curves"].items():
        xs = [int(k) for k in curve]
        ax.plot(xs, list(curve.values()), "-" if name.endswith("+ft") or name == "none" else "--",
                color=colors[name.removesuffix("+ft")], marker="o", ms=4, label=name)  # fmt: skip
    ax.axvline(res["orig"], color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", ylabel="perplexity, held-out stdlib code",
           title=f"tiny model {res['orig']} -> {res['length']}: dashed = factors only, solid = + fine-tune")  # fmt: skip
    ticks = [int(k) for k in res["curves"]["none"]]
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(res: dict) -> str:
    lengths = list(res["curves"]["none"])
    lines = [
        "| model | " + " | ".join(f"ppl @{k}" for k in lengths) + " | passkey (per length) |",
        "|---" * (len(lengths) + 2) + "|",
    ]
    for name, curve in res["curves"].items():
        pk = ", ".join(f"{k}: {v:.2f}" for k, v in res["passkey"][name].items())
        lines.append(f"| {name} | " + " | ".join(f"{curve[k]:.2f}" for k in lengths) + f" | {pk} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="default")
    ap.add_argument("--part", choices=("tiny", "smollm2", "all"), help="default: all; smoke: tiny")
    ap.add_argument("--run", default="runs/speedrun-smoke", help="speedrun run dir (made if missing)")
    ap.add_argument("--out", default="runs/longctx")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smol-variants", help="comma list of none,yarn,longrope (default: the size's)")
    ap.add_argument("--prefill-chunk", type=int, help="SmolLM2: Engine prefill_chunk (default: one shot)")
    ap.add_argument("--plot", help="default: docs/longctx.png (size default), <out>/longctx.png (smoke)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot from <out>/results-tiny.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    if args.smol_variants:
        size = dataclasses.replace(size, smol_passkey=tuple(args.smol_variants.split(",")))
    args.part = args.part or ("tiny" if args.size == "smoke" else "all")
    args.plot = args.plot or ("docs/longctx.png" if args.size == "default" else f"{args.out}/longctx.png")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.replot:
        res = json.loads((out / "results-tiny.json").read_text())
        res["curves"] = {k: {int(n): v for n, v in c.items()} for k, c in res["curves"].items()}
        plot(res, Path(args.plot))
        print(table({**res, "passkey": res["passkey"]}))
        return
    if args.part in ("tiny", "all"):
        res = run_tiny(args, size)
        (out / "results-tiny.json").write_text(json.dumps(res, indent=1))
        plot(res, Path(args.plot))
        print(table(res))
    if args.part in ("smollm2", "all"):
        res = run_smollm2(args, size)
        (out / "results-smollm2.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: v for k, v in res.items() if k != "search"}, indent=1))
    log(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
