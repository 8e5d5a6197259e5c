"""Run benchmark tasks against a model through the engine and write reports under OUT/eval/.

    results = phiforge.eval.run("runs/x/ckpt", tasks=["sanity", "humaneval"], data_dir=..., out="runs/x")

Multiple choice: every (context, option) pair of a task is scored in one batched log-likelihood pass.
Generation: prompts are completed in batches (greedy unless temperature > 0; n samples per prompt for
pass@k), code is executed in the sandbox with parallel workers. Each finished task is saved to
OUT/eval/tasks/<task>.json; a rerun with the same settings reuses it (resumable).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..infer import score
from ..infer.engine import Engine
from ..infer.sampling import SamplingParams
from ..io import atomic_write, progress_bar, read_jsonl, write_json, write_jsonl
from ..sandbox import Limits, run_many
from ..stages import Stages
from . import metrics
from .tasks import GenItem, Task, registry


@dataclass
class EvalSettings:
    tasks: list[str]
    data_dir: str | None = None
    limit: int | None = None  # items per task (per subject/subtask for MMLU and BBH)
    shots: dict[str, int] = field(default_factory=dict)  # overrides of each task's default
    n_samples: int = 1  # generations per prompt (pass@k for k <= n)
    temperature: float = 0.0  # 0 = greedy; n_samples > 1 needs > 0
    top_p: float = 0.95
    seed: int = 0
    max_new_tokens: int | None = None  # override of each task's default
    batch_size: int = 8  # prompts per generate call
    score_tokens: int = 4096  # padded tokens per log-likelihood batch
    workers: int = max(1, os.cpu_count() or 1)  # parallel sandboxes
    timeout: float = 10.0  # seconds per program
    device: str = "cpu"  # where the model runs ("cuda" on a GPU box)
    judge_url: str | None = None  # OpenAI-compatible judge (safety tasks, mt_bench); None: the offline judge
    judge_model: str | None = None
    # "float32" dequantizes a GGUF's Q4/Q8 weights: scoring runs many short forwards, and the int4 path
    # dequantizes every weight on each one (0-shot ARC, 150 items: int4 unfinished after 10 CPU-minutes)
    dtype: str | None = None


def resolve_tasks(names) -> list[Task]:
    reg = registry()
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not names:
        raise ValueError("no tasks given")
    bad = [n for n in names if n not in reg]
    if bad:
        raise ValueError(f"unknown task {bad[0]!r}: choose from {', '.join(reg)}")
    return [reg[n] for n in names]


def _metric(values) -> dict:
    m, se = metrics.mean_stderr(list(values))
    return {"value": m, "stderr": se}


# ---- multiple choice -------------------------------------------------------------------------------
def run_mc(engine: Engine, task: Task, items, s: EvalSettings, progress=None) -> tuple[dict, list[dict]]:
    pairs = [p for it in items for p in it.pairs]
    lls = score.loglikelihood(engine, pairs, max_tokens=s.score_tokens, on_batch=progress)
    per, k = [], 0
    for it in items:
        ll = [x[0] for x in lls[k : k + len(it.pairs)]]
        k += len(it.pairs)
        if task.kind == "mc2":
            rec = {"mc2": metrics.mc2_score(ll, it.labels)}
        else:
            rec = metrics.mc_scores(ll, it.norm, it.gold)
        per.append({"id": it.id, **rec, "gold": it.gold, "lls": ll, "context_tail": it.pairs[0][0][-300:]})
    names = ["mc2"] if task.kind == "mc2" else ["acc", "acc_norm", "acc_bytes"]
    return {m: _metric(r[m] for r in per) for m in names}, per


# ---- generation ------------------------------------------------------------------------------------
def generate(engine: Engine, items: list[GenItem], s: EvalSettings, progress=None) -> list[list[str]]:
    """n_samples completions per item, batched by similar prompt length; prompts are left-truncated."""
    tok = engine.tokenizer
    ctx = engine.cfg.max_position_embeddings
    jobs = []  # (item index, sample index, ids, params)
    for i, it in enumerate(items):
        new = min(s.max_new_tokens or it.max_new_tokens, ctx // 2)
        if it.chat:  # one user message, or the whole conversation so far (MT-bench's second turn)
            msgs = it.meta.get("messages") or [{"role": "user", "content": it.prompt}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True)[-(ctx - new) :]
        else:
            ids = tok.encode(it.prompt)[-(ctx - new) :]
        for j in range(s.n_samples):
            jobs.append((i, j, ids, new, it.stop))
    out: list[list[str]] = [[""] * s.n_samples for _ in items]
    jobs.sort(key=lambda j: (tuple(j[4]), j[3], len(j[2])))  # same stops and budget share a batch
    for b in range(0, len(jobs), s.batch_size):
        batch = jobs[b : b + s.batch_size]
        groups = defaultdict(list)
        for job in batch:
            groups[(tuple(job[4]), job[3])].append(job)
        for (stop, new), js in groups.items():
            params = SamplingParams(
                max_new_tokens=new,
                temperature=s.temperature,
                top_p=s.top_p if s.temperature > 0 else 1.0,
                seed=s.seed + b,
                stop=list(stop),
            )
            for job, res in zip(js, engine.generate([j[2] for j in js], params), strict=True):
                out[job[0]][job[1]] = res.text
        if progress:
            progress(len(batch))
    return out


def run_gen(engine, task: Task, items, s: EvalSettings, progress=None) -> tuple[dict, list[dict]]:
    texts = generate(engine, items, s, progress)
    per = []
    for it, outs in zip(items, texts, strict=True):
        checks = [task.check(it, t) for t in outs]
        per.append(
            {
                "id": it.id,
                "output": outs[0],
                "target": it.target,
                **checks[0],
                "n_correct": sum(c["correct"] for c in checks),
            }
        )
    res = {"exact_match": _metric(float(r["correct"]) for r in per)}
    subs = defaultdict(list)
    for it, r in zip(items, per, strict=True):
        if "subtask" in it.meta:
            subs[it.meta["subtask"]].append(float(r["correct"]))
    if subs:
        res["subtasks"] = {k: _metric(v) for k, v in sorted(subs.items())}
    return res, per


def run_code(engine, task: Task, items, s: EvalSettings, progress=None) -> tuple[dict, list[dict]]:
    texts = generate(engine, items, s, progress)
    programs = [task.program(it, t) for it, outs in zip(items, texts, strict=True) for t in outs]
    results = run_many(programs, Limits(timeout=s.timeout, cpu_seconds=int(s.timeout)), workers=s.workers)
    per = []
    n = s.n_samples
    for i, (it, outs) in enumerate(zip(items, texts, strict=True)):
        rs = results[i * n : (i + 1) * n]
        c = sum(r.passed for r in rs)
        per.append(
            {
                "id": it.id,
                "output": outs[0],
                "status": rs[0].status,
                "detail": rs[0].detail,
                "n": n,
                "c": c,
                "statuses": [r.status for r in rs],
            }
        )
    ks = [k for k in (1, 10, 100) if k <= n]
    res = {f"pass@{k}": _metric(metrics.pass_at_k(n, r["c"], k) for r in per) for k in ks}
    res["outcomes"] = dict(Counter(r.status for r in results))  # why samples failed: timeout / memory / ...
    return res, per


def run_judged(engine, task: Task, items, s: EvalSettings, judge, progress=None) -> tuple[dict, list[dict]]:
    """Generate, then let the judge decide each defect; a defect rate overall, per group, per category."""
    texts = [t[0] for t in generate(engine, items, s, progress)]
    verdicts = task.judge(judge, items, texts)
    per = [
        {"id": it.id, "prompt": it.prompt, "output": t, "category": it.meta["subtask"], **v}
        for it, t, v in zip(items, texts, verdicts, strict=True)
    ]
    res = {"defect_rate": _metric(float(r["defect"]) for r in per)}
    groups, cats = defaultdict(list), defaultdict(list)
    for it, r in zip(items, per, strict=True):
        groups[it.meta["group"]].append(float(r["defect"]))
        cats[r["category"]].append(float(r["defect"]))
    if len(groups) > 1:
        res.update({f"defect_rate/{g}": _metric(v) for g, v in sorted(groups.items())})
    res["subtasks"] = {k: _metric(v) for k, v in sorted(cats.items())}
    res["judge"] = {"name": judge.name, "agreement": judge.agreement}
    return res, per


def run_mt_bench(engine, task: Task, items, s: EvalSettings, client, root, model_id: str, progress=None):
    """Two turns through the chat template (answers reused when present), then grading if a judge is set."""
    from .tasks import mt_bench

    d = root / "mt_bench" if root else None
    gen_key = {k: v for k, v in asdict(s).items() if k not in ("tasks", "judge_url", "judge_model")}
    gen_key["ids"] = [it.id for it in items]
    answered = Stages(d) if d else None  # marker mt_bench/answers.json: the answers of these settings exist
    if answered and answered.done("answers", gen_key) and (d / "answers.jsonl").is_file():
        answers = [r["choices"][0]["turns"] for r in read_jsonl(d / "answers.jsonl")]
    else:
        first = [t[0] for t in generate(engine, items, s, progress)]
        second_items = [
            GenItem(
                it.id,
                it.meta["turns"][1],
                None,
                max_new_tokens=it.max_new_tokens,
                chat=True,
                meta={
                    "messages": [
                        {"role": "user", "content": it.meta["turns"][0]},
                        {"role": "assistant", "content": a},
                        {"role": "user", "content": it.meta["turns"][1]},
                    ]
                },
            )
            for it, a in zip(items, first, strict=True)
        ]
        second = [t[0] for t in generate(engine, second_items, s, progress)]
        answers = [[a, b] for a, b in zip(first, second, strict=True)]
        if d:
            write_jsonl(d / "answers.jsonl", mt_bench.answers_rows(items, answers, model_id))
            answered.mark("answers", gen_key, len(answers))
    per = [
        {"id": it.id, "category": it.meta["subtask"], "output": a[0], "turns": a, "scores": [-1.0, -1.0]}
        for it, a in zip(items, answers, strict=True)
    ]
    if client is None:
        note = "answers generated and stored; grading needs a judge: pass --judge-url and --judge-model"
        return {"note": note}, per
    prompts = mt_bench.judge_prompts(Path(s.data_dir))
    reqs = [r for it, a in zip(items, answers, strict=True) for r in mt_bench.judge_requests(it, a, prompts)]
    replies = client.ask(reqs)
    for i, r in enumerate(per):
        turns = replies[2 * i : 2 * i + 2]
        r["judgments"] = [a.text if a.ok else f"error: {a.error}" for a in turns]
        r["scores"] = [mt_bench.parse_rating(a.text) if a.ok else -1.0 for a in turns]
    res = mt_bench.summarize(per)
    res["judge"] = {"name": client.name}
    if d:
        write_jsonl(d / "judgments.jsonl", per)
        if res["subtasks"]:
            mt_bench.plot(res["subtasks"], d / "scores.png", f"MT-bench, judge {client.model}")
    return res, per


def _judge_client(s: EvalSettings, root):
    if not s.judge_url:
        return None
    if not s.judge_model:
        raise ValueError("--judge-url needs --judge-model (the model name the endpoint serves)")
    from ..teacher import Client

    return Client(s.judge_url, s.judge_model, cache_path=root / "judge_cache.sqlite" if root else None)


# ---- driver ----------------------------------------------------------------------------------------
def run(
    model_dir,
    tasks,
    data_dir=None,
    limit: int | None = None,
    out=None,
    engine: Engine | None = None,
    show_progress: bool = True,
    **kw,
) -> dict:
    """Evaluate `model_dir` (HF layout + tokenizer.json) on `tasks`; write OUT/eval/{results.json,
    results.md,samples/,tasks/} when `out` is given. Returns the results dict (also what results.json holds)."""
    s = EvalSettings(
        tasks=[t.name for t in resolve_tasks(tasks)],
        data_dir=str(data_dir) if data_dir else None,
        limit=limit,
        **kw,
    )
    if s.n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {s.n_samples}")
    if s.n_samples > 1 and s.temperature <= 0:
        raise ValueError("n_samples > 1 needs temperature > 0 (greedy samples are all the same)")
    root = Path(out) / "eval" if out else None
    done = Stages(root / "tasks") if root else None  # one marker per task: a rerun reuses finished tasks
    report = {"model": str(model_dir), "settings": asdict(s), "tasks": {}}
    # load every task's data first: a missing or malformed file fails before any model time is spent
    plan = []
    for task in resolve_tasks(s.tasks):
        shots = s.shots.get(task.name, task.shots)
        key = {**asdict(s), "tasks": [task.name], "shots": shots}
        prev = done.done(task.name, key) if done else None
        if prev is not None:
            report["tasks"][task.name] = prev["result"]
            continue
        items = task.load(Path(s.data_dir) if s.data_dir else None, s.limit, shots)
        if not items:
            raise ValueError(f"task {task.name}: no items loaded")
        report["tasks"][task.name] = None  # keeps the requested order
        plan.append((task, shots, key, items))
    if plan:
        if s.dtype is not None and not isinstance(getattr(torch, s.dtype, None), torch.dtype):
            raise ValueError(f"dtype {s.dtype!r} is not a torch dtype (float32, bfloat16, ...)")
        dtype = getattr(torch, s.dtype) if s.dtype else None
        engine = engine or Engine.load(model_dir, device=s.device, dtype=dtype)
    client = _judge_client(s, root) if any(p[0].kind in ("judged", "mt_bench") for p in plan) else None
    judge = None
    if any(p[0].kind == "judged" for p in plan):
        from .judges import LLMJudge, OfflineJudge

        judge = LLMJudge(client) if client else OfflineJudge(s.data_dir)
    with progress_bar() if show_progress and plan else nullcontext() as prog:
        for task, shots, key, items in plan:
            t0 = time.perf_counter()
            total = (
                sum(len(it.pairs) for it in items) if task.kind in ("mc", "mc2") else len(items) * s.n_samples
            )
            total *= 2 if task.kind == "mt_bench" else 1  # two turns
            bar = prog.add_task(f"{task.name} ({shots}-shot)", total=total) if prog else None
            adv = (lambda k, bar=bar: prog.advance(bar, k)) if prog else None
            if task.kind == "judged":
                res, per = run_judged(engine, task, items, s, judge, adv)
            elif task.kind == "mt_bench":
                res, per = run_mt_bench(engine, task, items, s, client, root, Path(str(model_dir)).name, adv)
            else:
                runner = {"mc": run_mc, "mc2": run_mc, "gen": run_gen, "code": run_code}[task.kind]
                res, per = runner(engine, task, items, s, adv)
            result = {
                "setting": task.setting,
                "shots": shots,
                "n": len(items),
                "seconds": round(time.perf_counter() - t0, 2),
                "metrics": res,
                "samples": per[:3],
            }
            report["tasks"][task.name] = result
            if root:
                write_jsonl(root / "samples" / f"{task.name}.jsonl", per)
                done.mark(task.name, key, result, result["seconds"])
    if client:
        client.close()
    if root:
        write_json(root / "results.json", report, indent=1)
        atomic_write(root / "results.md", markdown(report))
    return report


def _fmt(m: dict) -> str:
    v, se = m["value"], m["stderr"]
    return f"{v:.4f} ± {se:.4f}" if se == se else f"{v:.4f}"


def markdown(report: dict) -> str:
    lines = [f"# Evaluation of `{report['model']}`", ""]
    s = report["settings"]
    lines += [
        f"limit {s['limit']}, n_samples {s['n_samples']}, temperature {s['temperature']}, seed {s['seed']}, data {s['data_dir']}",
        "",
    ]
    lines += ["| task | shots | n | metric | value ± stderr |", "|---|---|---|---|---|"]
    for name, r in report["tasks"].items():
        for m, v in r["metrics"].items():
            if m not in ("subtasks", "outcomes", "note", "judge"):
                lines.append(f"| {name} | {r['shots']} | {r['n']} | {m} | {_fmt(v)} |")
    lines += ["", "## Settings", ""]
    lines += [f"- **{name}** ({r['shots']}-shot): {r['setting']}" for name, r in report["tasks"].items()]
    for name, r in report["tasks"].items():
        lines += ["", f"## {name}: sample outputs", ""]
        for smp in r["samples"]:
            shown = {
                k: v
                for k, v in smp.items()
                if k in ("id", "output", "target", "correct", "status", "detail", "acc", "mc2", "extracted")
            }
            lines.append(
                "```\n" + json.dumps(shown, ensure_ascii=False, indent=1, default=str)[:1500] + "\n```"
            )
        if "note" in r["metrics"]:
            lines += ["", f"note: {r['metrics']['note']}"]
        if "judge" in r["metrics"]:
            lines += ["", f"judge: {json.dumps(r['metrics']['judge'], default=str)}"]
        if "outcomes" in r["metrics"]:
            lines += ["", "outcomes: " + ", ".join(f"{k} {v}" for k, v in r["metrics"]["outcomes"].items())]
        if "subtasks" in r["metrics"]:
            head = (
                "defect_rate"
                if "defect_rate" in r["metrics"]
                else "score"
                if "score" in r["metrics"]
                else "exact_match"
            )
            lines += ["", f"| subtask | {head} |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in r["metrics"]["subtasks"].items()]
    return "\n".join(lines) + "\n"


def settings_table(tasks, shots: dict[str, int] | None = None) -> str:
    """The settings each task runs with (for --help / the CLI's banner); `shots` overrides as in run()."""
    lines = []
    for t in resolve_tasks(tasks):
        n = (shots or {}).get(t.name, t.shots)
        note = "" if n == t.shots else f" (default {t.shots}-shot; the setting below describes the default)"
        lines.append(f"{t.name:15s} {n:2d}-shot  {t.setting}{note}")
    return "\n".join(lines)
