"""`phiforge speedrun`: phi-1 at home, end to end, on the code of the local Python installation.

    data (harvest, annotate, classify, filter, dedup, decontaminate, tokenizer, shards)
    -> all-code shards (the same corpus unfiltered, deduplicated and decontaminated) + instruction reversal
    -> pretrain phase 1 (all code) -> phase 2 (textbook-quality subset + docstring->function pairs)
    -> SFT on held-out docstring->function conversations -> eval -> int4 + re-eval -> HF + GGUF -> report
and, beside it, the post-training track on a real model (posttrain.py: SmolLM2-135M-Instruct -> Pivotal Token
Search on arith problems -> DPO -> int4, accuracy on held-out problems at each step).

Only wiring lives here: every stage is a library call of phiforge.data / train / eval / infer. Each stage
writes `stages/<name>.json` (its settings and results) when it finishes; a re-run skips finished stages and a
killed one resumes (the data stages and the trainer resume on their own). `--ablate-quality` adds the Phi
claim as an experiment: the same model trained for the same tokens on filtered vs unfiltered code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from .. import stages as markers
from ..io import read_metrics
from .posttrain import GROUP, REAL_MODEL, PostTrain

console = Console(stderr=True)
VAL_FRACTION = 0.1  # of documents, by id hash: val shards + the held-out SFT conversations
# The default budget's synth stage: 8 requests -> ~12 generations of <= 256 tokens with the revisions. A quiet
# full `make run` (2026-12-01, fifth session) spent 484 s on 16 requests for 9 documents, 1,445 tokens (0.05% of
# pretraining's): here the stage shows the path end to end, its effect is measured by `--ablate-quality` and
# `phiforge data synth` at larger sizes, and halving it buys back 4 of the run's 40 minutes (benchmarks/RESULTS.md).
SYNTH_DEFAULT = 8
SYNTH_WEIGHT = 0.15  # phase 2's share of synthetic tokens when there are any (taken from the quality share)


@dataclass(frozen=True, kw_only=True)
class Budget:
    max_bytes: int  # local Python code harvested (file bytes)
    annotate_docs: int  # teacher-labelled sample
    vocab_size: int
    preset: str
    seq_len: int
    micro_batch: int
    lr: float
    pretrain_tokens: int  # phase 1 + phase 2 (fixed budgets: the same run on every machine)
    pretrain_seconds: float | None  # or: size the token budget to this much training time on this machine
    phase1_share: float  # of the pretraining tokens: all code; the rest: textbook-quality mixture
    sft_epochs: float
    humaneval_limit: int | None  # problems for pass@1 (None: all 164)
    max_new_tokens: int
    eval_tokens: int  # validation tokens per dataset
    post: PostTrain | None  # the post-training track on the real model (None: not run)
    synth_requests: int = (
        0  # synthetic textbooks/exercises/QA asked of the teacher for phase 2 (0: no synth stage)
    )


BUDGETS = {
    # CI: every stage runs for real, on a small slice, in about 2-3 minutes on 2 quiet cores
    "smoke": Budget(
        max_bytes=3_000_000, annotate_docs=600, vocab_size=2048, preset="tiny", seq_len=256, micro_batch=8,
        lr=3e-3, pretrain_tokens=180_000, pretrain_seconds=None, phase1_share=0.65, sft_epochs=1.0,
        humaneval_limit=12, max_new_tokens=96, eval_tokens=16_384,
        post=PostTrain(test=8, train=3, k=4, epochs=1),
    ),
    # `make run`: <= 40 minutes on 2 cores; pretraining gets 12 of them, whatever this machine's speed, the
    # post-training track (real model: PTS on 12 problems at K=4, 2 DPO epochs, 48 held-out problems) 983 s.
    # Measured quiet 2026-12-01: the whole run 33 min 38 s (PTS 723 s for 392 rollouts; benchmarks/RESULTS.md)
    "default": Budget(
        max_bytes=40_000_000, annotate_docs=3000, vocab_size=8192, preset="tiny", seq_len=256, micro_batch=16,
        lr=3e-3, pretrain_tokens=0, pretrain_seconds=720, phase1_share=0.6, sft_epochs=2.0,
        humaneval_limit=None, max_new_tokens=192, eval_tokens=65_536,
        post=PostTrain(test=48, train=12, k=4, epochs=2), synth_requests=SYNTH_DEFAULT,
    ),
    # an evening: a 10M model
    "long": Budget(
        max_bytes=40_000_000, annotate_docs=3000, vocab_size=8192, preset="tiny-10m", seq_len=512,
        micro_batch=16, lr=2e-3, pretrain_tokens=0, pretrain_seconds=4 * 3600, phase1_share=0.6,
        sft_epochs=2.0, humaneval_limit=None, max_new_tokens=384, eval_tokens=131_072,
        post=PostTrain(test=200, train=48, k=8, epochs=3), synth_requests=600,
    ),
}  # fmt: skip


@dataclass
class SpeedrunConfig:
    out: str = "runs/speedrun"
    budget: str = "default"
    teacher_url: str | None = None
    teacher_model: str = "gpt-4o-mini"
    teacher_local: str | None = None  # a model run in this process as the teacher (short name, dir, .gguf)
    teacher_method: str = "text"  # text | geval | askllm (data/annotate.py)
    ablate_quality: bool = False
    synth_requests: int | None = None  # None: the budget's
    annotate_docs: int | None = None  # None: the budget's labelled sample (an LLM teacher costs s per doc)
    keep_fraction: float | None = None  # keep the top fraction by quality score (None: score >= 3)
    benchmarks: tuple[str, ...] = ()  # more eval sets to decontaminate against (HumanEval always)
    seed: int = 0

    def __post_init__(self):
        from ..data.pipeline import check_keep_fraction

        check_keep_fraction(self.keep_fraction)


class Stages:
    """Run a stage unless `stages/<name>.json` says it finished with the same settings."""

    def __init__(self, run_dir: Path):
        self.markers = markers.Stages(run_dir / "stages")
        self.rows: list[dict] = []
        self.t0 = time.time()

    def __call__(self, name: str, settings: dict, fn, summary=lambda r: "") -> dict:
        rec = self.markers.done(name, settings)
        if rec is not None:
            console.print(f"[bold]{name}[/]: done already, skipped")
            self.rows.append({"stage": name, "seconds": rec["seconds"], "result": summary(rec["result"])})
            return rec["result"]
        console.rule(f"[bold]{name}[/] ({time.time() - self.t0:.0f}s)")
        t = time.time()
        result = fn()
        seconds = round(time.time() - t, 1)
        self.markers.mark(name, settings, result, seconds)
        self.rows.append({"stage": name, "seconds": seconds, "result": summary(result)})
        console.print(f"  {summary(result)}")
        return result


# ---- stages -----------------------------------------------------------------------------------------


def data_stage(run_dir: Path, b: Budget, cfg: SpeedrunConfig) -> dict:
    from ..data.annotate import TeacherConfig
    from ..data.pipeline import DataConfig
    from ..data.pipeline import run as data_run

    teacher = TeacherConfig(
        url=cfg.teacher_url, model=cfg.teacher_model, local=cfg.teacher_local, method=cfg.teacher_method
    )
    dc = DataConfig(
        max_bytes=b.max_bytes,
        annotate_docs=b.annotate_docs,
        vocab_size=b.vocab_size,
        val_fraction=VAL_FRACTION,
        teacher=teacher,
        benchmarks=list(cfg.benchmarks),
        seed=cfg.seed,
        keep_fraction=cfg.keep_fraction,
    )
    stats = data_run(dc, run_dir)
    return {
        "docs_raw": stats["raw"]["docs_out"],
        "docs_clean": stats["clean"]["docs_out"],
        "teacher": stats["annotated"]["teacher"],
        "classifier": stats["classifier"]["metrics"],
        "shards": stats["shards"],
    }


def allcode_stage(run_dir: Path) -> dict:
    """The unfiltered corpus, deduplicated and decontaminated like the filtered one, in the same tokens."""
    from ..data.decontam import run_decontam
    from ..data.dedup import run_dedup
    from ..data.pipeline import tokenize
    from ..data.stage import quiet_logs

    d = run_dir / "data"
    with quiet_logs():
        ded = run_dedup(d / "raw", d / "all_deduped", d / "logs" / "all_deduped")
        dec = run_decontam(d / "all_deduped", d / "all_clean", d / "reports" / "all_contamination",
                           logging_dir=d / "logs" / "all_clean")  # fmt: skip
        shards = tokenize(d / "all_clean", run_dir / "shards_all", run_dir / "tokenizer", VAL_FRACTION,
                          logs=d / "logs" / "shards_all")  # fmt: skip
    return {"duplicate_rate": ded["duplicate_rate"], "contaminated": dec["removed"], "shards": shards}


def instruct_stage(run_dir: Path) -> dict:
    from ..data import instruct
    from ..data.pipeline import tokenize
    from ..data.stage import quiet_logs
    from ..tokenizer import Tokenizer

    d = run_dir / "data"
    tok = Tokenizer.from_file(run_dir / "tokenizer")
    n = instruct.build(d / "all_clean", d / "instruct", run_dir / "sft.jsonl", tok, VAL_FRACTION)
    with quiet_logs():
        shards = tokenize(d / "instruct", run_dir / "shards_instruct", run_dir / "tokenizer", VAL_FRACTION,
                          tasks=1, workers=1, logs=d / "logs" / "shards_instruct")  # fmt: skip
    return {**n, "shards": shards}


def synth_stage(run_dir: Path, cfg: SpeedrunConfig, requests: int) -> dict:
    """Synthetic textbook sections, exercises and Q/A about the filtered corpus's topics, verified by
    execution, as token shards for phase 2 (all train: held-out loss is measured on the quality code)."""
    from ..data.annotate import TeacherConfig
    from ..data.pipeline import tokenize
    from ..data.stage import quiet_logs
    from ..data.synth import SynthConfig, SynthSettings, synthesize

    if cfg.teacher_url:
        teacher = TeacherConfig(url=cfg.teacher_url, model=cfg.teacher_model)
    else:
        teacher = TeacherConfig(local=cfg.teacher_local or REAL_MODEL)
    d = run_dir / "data"
    sc = SynthConfig(requests=requests, benchmarks=list(cfg.benchmarks), seed=cfg.seed,
                     settings=SynthSettings(teacher=teacher))  # fmt: skip
    with quiet_logs():
        r = synthesize(d / "clean", d / "synth", sc)
        shards = None
        if r["docs_out"]:
            shards = tokenize(d / "synth", run_dir / "shards_synth", run_dir / "tokenizer", 0.0, tasks=1,
                              workers=1, logs=d / "logs" / "shards_synth")  # fmt: skip
    keep = ("funnel", "dropped", "docs_out", "teacher", "tokens", "diversity", "topics_kept", "seconds")
    return {**{k: r.get(k) for k in keep}, "requests": requests, "shards": shards}


def _synth_usable(syn: dict | None, b: Budget) -> bool:
    """Enough synthetic train tokens for one training window (the mixture samples windows)."""
    return bool(syn and syn.get("shards") and syn["shards"]["train"]["tokens"] > b.seq_len + 1)


def train_config(run_dir: Path, out: Path, b: Budget, phases: list, seed: int):
    from ..train import TrainConfig

    return TrainConfig(
        name=out.name,
        out=str(out),
        preset=b.preset,
        tokenizer=str(run_dir / "tokenizer"),
        phases=phases,
        seq_len=b.seq_len,
        micro_batch=b.micro_batch,
        lr=b.lr,
        warmup_steps=20,
        eval_every=0,
        eval_tokens=b.eval_tokens,
        save_every=200,
        keep_last=1,
        seed=seed,
    )


def calibrate_stage(run_dir: Path, b: Budget, seed: int) -> dict:
    """Size the pretraining token budget: time a few real training steps of this model on this machine."""
    from ..train.pretrain import measure_throughput

    if b.pretrain_seconds is None:
        return {"tokens": b.pretrain_tokens, "tokens_per_s": None}
    tps = measure_throughput(train_config(run_dir, run_dir / "calibrate", b, [], seed))
    tokens = int(tps * b.pretrain_seconds)
    return {"tokens": tokens, "tokens_per_s": round(tps, 1), "seconds": b.pretrain_seconds}


def pretrain_stage(run_dir: Path, b: Budget, seed: int, tokens: int, synth: bool = False) -> dict:
    from ..train import Dataset, Phase, pretrain

    t1 = int(tokens * b.phase1_share)
    w = SYNTH_WEIGHT if synth else 0.0
    phase2 = [
        Dataset(str(run_dir / "shards"), 0.7 - w, "quality"),
        Dataset(str(run_dir / "shards_instruct"), 0.3, "instruct"),
    ] + ([Dataset(str(run_dir / "shards_synth"), w, "synthetic")] if synth else [])
    phases = [
        Phase("phase1-all-code", t1, [Dataset(str(run_dir / "shards_all"), 1.0, "all-code")]),
        Phase("phase2-textbook", tokens - t1, phase2),
    ]
    cfg = train_config(run_dir, run_dir / "train", b, phases, seed)
    ckpt = pretrain(cfg, resume=True)  # resumes from the newest checkpoint when there is one
    return {"ckpt": str(ckpt), **_last_eval(run_dir / "train" / "metrics.jsonl")}


def _last_eval(metrics: Path) -> dict:
    rows = read_metrics(metrics)
    train = [r for r in rows if r.get("type") == "train"]
    evals = [r for r in rows if r.get("type") == "eval"]
    out = {"steps": train[-1]["step"] if train else 0, "tokens": train[-1]["tokens"] if train else 0}
    if train:
        out["tokens_per_s"] = sum(r["tokens_per_s"] for r in train) / len(train)
        out["final_train_loss"] = train[-1]["loss"]
    if evals:
        out["val_loss"] = evals[-1]["val_loss"]
    return out


def sft_stage(run_dir: Path, b: Budget, seed: int, base: str) -> dict:
    from ..train import sft

    cfg = train_config(run_dir, run_dir / "sft", b, [], seed)
    cfg.lr, cfg.warmup_steps, cfg.sft_epochs = b.lr / 3, 10, b.sft_epochs
    ckpt = sft(base, run_dir / "sft.jsonl", cfg, resume=True)
    return {"ckpt": str(ckpt), **_last_eval(run_dir / "sft" / "metrics.jsonl")}


def val_loss(engine, shard_dir: Path, b: Budget) -> float:
    """Validation loss as the training curve measures it: the same windows of the val split
    (train.mixture.val_batches), the same token mean (infer.score.heldout_loss)."""
    import torch

    from ..infer.score import heldout_loss
    from ..train import Dataset
    from ..train.mixture import val_batches

    windows = val_batches(
        Dataset(str(shard_dir)), b.seq_len, engine.cfg.vocab_size, b.eval_tokens, b.micro_batch
    )
    if not windows:
        raise ValueError(f"{shard_dir}: val split has fewer than {b.seq_len + 1} tokens")
    return heldout_loss(engine, torch.cat(windows), batch_size=b.micro_batch)


def eval_stage(model_dir: Path, out: Path, run_dir: Path, b: Budget, tasks=("humaneval", "sanity")) -> dict:
    """HumanEval pass@1 (+ sanity), bits-per-byte of HumanEval's canonical solutions, val loss on quality code."""
    from .. import eval as ev
    from ..eval.tasks.code import humaneval_solutions
    from ..infer.engine import Engine
    from ..infer.score import bits_per_byte

    engine = Engine.load(model_dir)
    # batch 1: the engine's native decode (fp32 and int4) beats padded batches of a tiny model several times
    rep = ev.run(model_dir, list(tasks), limit=b.humaneval_limit, out=out, engine=engine,
                 max_new_tokens=b.max_new_tokens, batch_size=1)  # fmt: skip
    res = {}
    for t, r in rep["tasks"].items():  # pass@1 for HumanEval, exact match for sanity
        name, m = next(iter(r["metrics"].items()))
        res[f"{t}_{name}"], res[f"{t}_n"] = m["value"], r["n"]
    res["humaneval_bpb"] = bits_per_byte(engine, humaneval_solutions())
    res["val_loss_quality"] = val_loss(engine, run_dir / "shards", b)
    res["weights_mb"] = _dir_mb(model_dir)
    return res


def _dir_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in Path(d).glob("*.safetensors")) / 1e6


def quant_stage(run_dir: Path, b: Budget, model_dir: Path) -> dict:
    """int4 (group 128) weights of the final model, measured again the same way as fp32."""
    from ..infer.quant import quantize_checkpoint

    out = run_dir / "model-int4"
    quantize_checkpoint(model_dir, out, bits=4, group_size=128)
    return eval_stage(out, run_dir / "int4", run_dir, b)


def export_stage(run_dir: Path, model_dir: Path) -> dict:
    """HF layout (transformers, vLLM, llama.cpp's converter) and GGUF (llama.cpp, on device)."""
    from ..infer.gguf_export import export_gguf

    hf = run_dir / "model"
    if hf.exists():
        shutil.rmtree(hf)
    shutil.copytree(model_dir, hf, ignore=shutil.ignore_patterns("trainer_state.pt", "*.tmp"))
    files = {"hf": str(hf)}
    for kind in ("f16", "q4_0"):
        path = run_dir / f"model-{kind}.gguf"
        export_gguf(hf, path, kind)
        files[kind] = str(path)
    return {"files": files, "mb": {k: round(_size_mb(Path(v)), 2) for k, v in files.items()}}


def _size_mb(p: Path) -> float:
    return _dir_mb(p) if p.is_dir() else p.stat().st_size / 1e6


def ablation_stage(run_dir: Path, b: Budget, seed: int, tokens: int, synth: bool = False) -> dict:
    """Same model, same seed, same number of tokens: the quality-filtered corpus vs all of it (and, with a
    synth stage, the filtered corpus with SYNTH_WEIGHT of synthetic tokens mixed in)."""
    from ..train import Dataset, Phase, pretrain

    arms = {"quality": [Dataset(str(run_dir / "shards"), 1.0, "quality")],
            "unfiltered": [Dataset(str(run_dir / "shards_all"), 1.0, "unfiltered")]}  # fmt: skip
    if synth:
        arms["quality+synth"] = [
            Dataset(str(run_dir / "shards"), 1.0 - SYNTH_WEIGHT, "quality"),
            Dataset(str(run_dir / "shards_synth"), SYNTH_WEIGHT, "synthetic"),
        ]
    res = {}
    for arm, datasets in arms.items():
        out = run_dir / "ablation" / arm
        phases = [Phase(f"{arm}-only", tokens, datasets)]
        ckpt = pretrain(train_config(run_dir, out, b, phases, seed), resume=True)
        res[arm] = {"ckpt": str(ckpt), **eval_stage(ckpt, out, run_dir, b, tasks=("humaneval",))}
    return res


# ---- the run ----------------------------------------------------------------------------------------

SAMPLE_REQUEST = "Write a Python function `is_palindrome(text)`.\n\nReturn True if text reads the same forwards and backwards."


def run(cfg: SpeedrunConfig) -> Path:
    """Every stage in order (finished ones are skipped); returns the path of report.md."""
    if cfg.budget not in BUDGETS:
        raise ValueError(f"--budget {cfg.budget!r}: expected one of {', '.join(BUDGETS)}")
    b = BUDGETS[cfg.budget]
    if cfg.annotate_docs is not None:  # part of the budget, so of every stage's key
        b = dataclasses.replace(b, annotate_docs=cfg.annotate_docs)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    st = Stages(run_dir)
    teacher = [cfg.teacher_url, cfg.teacher_model]
    if cfg.teacher_local or cfg.teacher_method != "text":  # old runs' keys stay as they were
        teacher += [cfg.teacher_local, cfg.teacher_method]
    # the pretraining track's stages are keyed by its own fields: a new post-training size redoes none of them
    key = {
        "budget": {k: v for k, v in asdict(b).items() if k not in ("post", "synth_requests")},
        "seed": cfg.seed,
        "teacher": teacher,
    }
    key_data = {**key, "benchmarks": list(cfg.benchmarks)}
    if cfg.keep_fraction is not None:  # only then: runs with the score bar keep their markers
        key_data["keep_fraction"] = cfg.keep_fraction
    console.print(f"[bold]phiforge speedrun[/] -> {run_dir}  budget {cfg.budget}: {b}")

    data = st(
        "data",
        key_data,
        lambda: data_stage(run_dir, b, cfg),
        lambda r: f"{r['docs_raw']:,} docs -> {r['docs_clean']:,} textbook-quality; teacher {r['teacher']}",
    )
    allc = st(
        "all-code",
        key_data,
        lambda: allcode_stage(run_dir),
        lambda r: (
            f"unfiltered: dup rate {r['duplicate_rate']:.1%}, {r['shards']['train']['tokens']:,} train tokens"
        ),
    )
    ins = st(
        "instruct",
        key_data,
        lambda: instruct_stage(run_dir),
        lambda r: f"{r['pretrain']:,} docstring->function pairs for phase 2, {r['sft']:,} held out for SFT",
    )
    syn = synth_stages(run_dir, cfg, st, key_data)
    use_synth = _synth_usable(syn, b)
    cal = st("calibrate", key_data, lambda: calibrate_stage(run_dir, b, cfg.seed),
             lambda r: f"pretraining budget {r['tokens']:,} tokens" + (f" ({r['tokens_per_s']:,.0f} tok/s x "
                       f"{r['seconds']:.0f} s)" if r["tokens_per_s"] else ""))  # fmt: skip
    key_train = {**key_data, "tokens": cal["tokens"]}
    if use_synth:  # only then: a run without synthetic data keeps its markers (and its numbers)
        key_train["synth"] = syn["requests"]
    pre = st(
        "pretrain",
        key_train,
        lambda: pretrain_stage(run_dir, b, cfg.seed, cal["tokens"], use_synth),
        _train_summary,
    )
    sft = st("sft", key_train, lambda: sft_stage(run_dir, b, cfg.seed, pre["ckpt"]), _train_summary)
    fp32 = st("eval", key_train, lambda: eval_stage(Path(sft["ckpt"]), run_dir, run_dir, b), _eval_summary)
    int4 = st("int4", key_train, lambda: quant_stage(run_dir, b, Path(sft["ckpt"])), _eval_summary)
    exp = st("export", key_train, lambda: export_stage(run_dir, Path(sft["ckpt"])),
             lambda r: ", ".join(f"{k} {v} MB" for k, v in r["mb"].items()))  # fmt: skip
    abl = None
    if cfg.ablate_quality:
        abl = st(
            "ablation",
            key_train,
            lambda: ablation_stage(run_dir, b, cfg.seed, cal["tokens"], use_synth),
            _ablation_summary,
        )
    post = posttrain_stages(run_dir, cfg, st)
    sample = _sample(Path(exp["files"]["hf"]))
    report = _write_report(run_dir, cfg, st, data, allc, ins, cal, fp32, int4, exp, abl, sample, post, syn)
    print(sample)
    console.print(f"[bold green]done[/] in {time.time() - st.t0:.0f}s: {report} (+ report.html)")
    console.print(
        f"next: phiforge chat --model {run_dir / 'model'}   |   phiforge serve --model {run_dir / 'model'}"
    )
    if "model" in post:
        console.print(f"      phiforge chat --model {post['model']}   # {REAL_MODEL} after PTS + DPO")
    return report


def synth_stages(run_dir: Path, cfg: SpeedrunConfig, st: Stages, key_data: dict) -> dict | None:
    """The synth stage when the budget (or --synth-requests) asks for one and a teacher is at hand."""
    from ..infer.load import resolve
    from ..model import CheckpointError

    n = BUDGETS[cfg.budget].synth_requests if cfg.synth_requests is None else cfg.synth_requests
    if not n:
        return None
    if not cfg.teacher_url:
        try:
            resolve(cfg.teacher_local or REAL_MODEL)
        except CheckpointError as e:
            console.print(f"[yellow]synth stage skipped[/]: {e}")
            return None
    return st("synth", {**key_data, "synth": n, "teacher_url": cfg.teacher_url}, lambda: synth_stage(run_dir, cfg, n),
              _synth_summary)  # fmt: skip


def _synth_summary(r: dict) -> str:
    f = r["funnel"]
    toks = r["shards"]["train"]["tokens"] if r.get("shards") else 0
    return (f"{f['requested']} requested -> {f['parsed']} parsed -> {f['passed']} passed (+{f['revised']} revised) "
            f"-> {f['kept']} kept, {toks:,} tokens; teacher {r['teacher']}")  # fmt: skip


def posttrain_stages(run_dir: Path, cfg: SpeedrunConfig, st: Stages) -> dict:
    """The post-training track's stages, or {"skipped": why} (one line here and in the report)."""
    from ..infer.load import resolve
    from ..model import CheckpointError
    from .posttrain import track

    b = BUDGETS[cfg.budget]
    if b.post is None:
        return {"skipped": f"budget {cfg.budget} has no post-training track"}
    try:
        resolve(REAL_MODEL)
    except CheckpointError as e:
        console.print(f"[yellow]post-training track skipped[/]: {e}")
        return {"skipped": str(e)}
    return track(run_dir, b.post, cfg.seed, st)


def _train_summary(r: dict) -> str:
    vl = r.get("val_loss") or {}
    vals = ", ".join(f"{k} {v:.3f}" for k, v in vl.items())
    out = f"{r['steps']} steps, {r['tokens']:,} tokens at {r.get('tokens_per_s', 0):,.0f} tok/s"
    return out + (f"; val loss {vals}" if vals else "")


def _eval_summary(r: dict) -> str:
    return (
        f"HumanEval pass@1 {r['humaneval_pass@1']:.3f} ({r['humaneval_n']} problems), bpb {r['humaneval_bpb']:.3f}, "
        f"val loss {r['val_loss_quality']:.3f}, sanity {r.get('sanity_exact_match', float('nan')):.2f}"
    )


def _ablation_summary(r: dict) -> str:
    q, u = r["quality"], r["unfiltered"]
    out = f"bpb quality {q['humaneval_bpb']:.3f} vs unfiltered {u['humaneval_bpb']:.3f}"
    return out + (
        f" vs quality+synth {r['quality+synth']['humaneval_bpb']:.3f}" if "quality+synth" in r else ""
    )


def _sample(model_dir: Path) -> str:
    """The SFT model answering a request in the format it was fine-tuned on (instruction reversal)."""
    from ..infer.engine import Engine
    from ..infer.sampling import SamplingParams

    engine = Engine.load(model_dir)
    # a small model loops under greedy decoding; light sampling shows better what it learned
    params = SamplingParams(max_new_tokens=128, temperature=0.8, top_p=0.95, seed=0)
    res = engine.chat([{"role": "user", "content": SAMPLE_REQUEST}], params)
    return f"# <|user|> {SAMPLE_REQUEST.replace(chr(10), ' ')}\n# <|assistant|>\n{res.text}"


def _eval_row(name: str, r: dict) -> dict:
    return {
        "model": name,
        "HumanEval pass@1": r["humaneval_pass@1"],
        "problems": r["humaneval_n"],
        "HumanEval bits/byte": r["humaneval_bpb"],
        "val loss (quality code)": r["val_loss_quality"],
        "sanity exact match": r.get("sanity_exact_match", ""),
        "weights MB": round(r["weights_mb"], 2),
    }


ARM_NAMES = {
    "quality": "quality-filtered",
    "unfiltered": "unfiltered",
    "quality+synth": "filtered + synthetic",
}


def _arms_verdict(abl: dict) -> str:
    """Which arm (of two or three) won each metric, and by how much against each of the others."""

    def cmp(metric, label, lower_better=True):
        vals = {ARM_NAMES[a]: r[metric] for a, r in abl.items()}
        if len(set(vals.values())) == 1:
            return f"{label}: a tie ({next(iter(vals.values())):.4g})"
        best = (min if lower_better else max)(vals, key=vals.get)
        rest = ", ".join(
            f"{n} {v:.4g} ({(vals[best] - v) / max(abs(v), 1e-12):+.1%})"
            for n, v in vals.items()
            if n != best
        )
        return f"{label}: **{best}** {vals[best]:.4g} vs {rest}"

    return (
        f"{len(abl)} arms at equal tokens and seed. "
        + "; ".join(
            [
                cmp("humaneval_bpb", "HumanEval bits/byte"),
                cmp("val_loss_quality", "held-out loss on quality code"),
                cmp("humaneval_pass@1", "HumanEval pass@1", lower_better=False),
            ]
        )  # fmt: skip
        + "."
    )


def _post_section(post: dict, st: Stages) -> dict:
    """The post-training track in the report: before/after/int4 accuracy, pairs found, seconds per stage."""
    if "skipped" in post:
        return {
            "lines": [f"Not run: {post['skipped']}."],
            "summary": f"Post-training track not run ({post['skipped']}).",
        }
    z, f, n = post["size"], post["pts"], post["size"]["test"]
    col = f"greedy accuracy ({n} held-out arith problems)"
    dpo = f"+ DPO on {f['pairs']} PTS pairs" if post["dpo"]["ckpt"] else "no PTS pairs: DPO skipped"
    rows = [("SmolLM2-135M-Instruct (fp32 from the GGUF)", post["before"], post["fp32_mb"]),
            (dpo, post["after"], post["fp32_mb"]), (f"+ int4 g{GROUP}", post["int4"], post["int4_mb"])]  # fmt: skip
    return {
        "summary": (
            f"Post-training track: {REAL_MODEL} solves {post['before']:.1%} of {n} held-out arith problems, "
            f"{post['after']:.1%} after DPO on {f['pairs']} pivotal-token pairs, {post['int4']:.1%} at int4."
        ),
        "lines": [
            f"PTS on {f['problems']} arith train problems, K={z['k']}: {f['kept']} kept with p(success) in "
            f"[0.2, 0.8], {f['pivotal']} pivotal tokens, {f['pairs']} with a contrasting alternative -> DPO pairs "
            f"({f['rollouts']} rollouts generated, {f['cached']} cached). DPO: epochs {z['epochs']}, lr "
            f"{z['lr']}, beta {z['beta']}. Accuracy is greedy, chat-prompted as PTS samples.",
        ],
        "table": [{"model": m, col: a, "weights MB": mb} for m, a, mb in rows],
        "stages": [{"stage": r["stage"], "seconds": r["seconds"]} for r in st.rows if r["stage"].startswith("post-")],
        "chat": f"phiforge chat --model {post['model']}",
    }  # fmt: skip


def _write_report(
    run_dir, cfg, st, data, allc, ins, cal, fp32, int4, exp, abl, sample, post, syn=None
) -> Path:
    from . import report

    b = BUDGETS[cfg.budget]
    training = {
        "pretrain": read_metrics(run_dir / "train" / "metrics.jsonl"),
        "sft": read_metrics(run_dir / "sft" / "metrics.jsonl"),
    }
    m = run_dir / "model"
    bpb_change = int4["humaneval_bpb"] / fp32["humaneval_bpb"] - 1
    s = {
        "name": run_dir.name,
        "budget": cfg.budget,
        "seconds": time.time() - st.t0,
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "teacher": data["teacher"],
        "summary": (
            f"A {b.preset} Phi-3-architecture model pretrained on {cal['tokens']:,} tokens of "
            f"the Python code on this machine, fine-tuned on {ins['sft']:,} held-out docstring->function pairs: "
            f"HumanEval pass@1 {fp32['humaneval_pass@1']:.3f} on {fp32['humaneval_n']} problems, "
            f"{fp32['humaneval_bpb']:.3f} bits/byte on the canonical solutions; int4 changes bits/byte by "
            f"{bpb_change:+.1%} at {int4['weights_mb'] / fp32['weights_mb']:.0%} of the weight bytes."
        ),
        "post": _post_section(post, st),
        "stages": st.rows,
        "data_lines": [
            f"- {data['docs_raw']:,} documents harvested, {data['docs_clean']:,} kept as textbook quality "
            f"(classifier Spearman {data['classifier']['spearman']:.3f} vs the teacher, F1@3 "
            f"{data['classifier']['f1_at_3']:.3f}); full data card: `report/data_card.md`.",
            f"- Unfiltered corpus for phase 1: {allc['shards']['train']['tokens']:,} train tokens "
            f"(duplicate rate {allc['duplicate_rate']:.1%}, {allc['contaminated']} HumanEval-contaminated docs removed).",
            f"- Instruction reversal: {ins['pretrain']:,} docstring->function pairs for phase 2, {ins['sft']:,} "
            "held out (never pretrained on) for SFT.",
            *(
                [
                    f"- Synthetic (teacher-written, verified by execution): {_synth_summary(syn)}; "
                    f"{'mixed into phase 2 at ' + format(SYNTH_WEIGHT, '.0%') if _synth_usable(syn, b) else 'too few tokens to mix in'}"
                    "; synthetic data card: `data/synth/card.md`."
                ]
                if syn
                else []
            ),
        ],
        "train_lines": [
            f"- {k}: {_train_summary(json.loads((run_dir / 'stages' / f'{k}.json').read_text())['result'])}"
            for k in ("pretrain", "sft")
        ],  # fmt: skip
        "eval": [_eval_row("fp32 (after SFT)", fp32), _eval_row("int4 g128", int4)],
        "quant_bars": {
            name: {
                "bits/byte": r["humaneval_bpb"],
                "val loss": r["val_loss_quality"],
                "weights MB": r["weights_mb"],
            }
            for name, r in (("fp32", fp32), ("int4", int4))
        },
        "sample": sample,
        "commands": [
            f"phiforge chat --model {m}",
            f"phiforge generate --model {m} --prompt 'def fibonacci(n):' --max-new-tokens 64",
            f"phiforge serve --model {m}            # OpenAI-compatible API + chat page on http://127.0.0.1:8000",
            f"phiforge chat --model {run_dir / 'model-int4'}   # the int4 weights",
            *(
                [f"phiforge chat --model {post['model']}   # {REAL_MODEL} after PTS + DPO"]
                if "model" in post
                else []
            ),
            f"phiforge eval --model {m} --tasks humaneval,sanity",
            f"llama-cli -m {run_dir / 'model-q4_0.gguf'} -p 'def fibonacci(n):'   # llama.cpp",
        ],
    }
    if abl:
        s["ablation"] = [
            {"data": ARM_NAMES[a], **_eval_row(ARM_NAMES[a], r)} for a, r in abl.items() if a in ARM_NAMES
        ]
        for row in s["ablation"]:
            row.pop("model")
        s["ablation_verdict"] = _arms_verdict(abl)
        s["ablation_bars"] = {
            name: {"HumanEval bits/byte": r["humaneval_bpb"], "val loss (quality)": r["val_loss_quality"]}
            for name, r in abl.items()
        }
        if len(abl) == 3:
            s["ablation_title"] = "same model, same tokens: filtered vs unfiltered vs filtered + synthetic"
        training.update(
            {f"ablation-{k}": read_metrics(run_dir / "ablation" / k / "metrics.jsonl") for k in abl}
        )
    return report.write(run_dir / "report", s, training, run_dir / "report" / "data_card.png")


def config_from(**kw) -> SpeedrunConfig:
    names = {f.name for f in dataclasses.fields(SpeedrunConfig)}
    return SpeedrunConfig(**{k: v for k, v in kw.items() if k in names and v is not None})
