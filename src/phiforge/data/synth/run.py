"""`phiforge data synth IN OUT`: the whole synthetic stage, folder in -> folder out, resumable.

    IN (quality-filtered documents) -> topics + seed documents -> plan.jsonl (n requests)
    -> SynthStep tasks (teacher + sandbox + one revision) -> OUT.work/verified
    -> MinHash dedup (within the set and against the seeds) -> decontamination -> OUT/00000.jsonl.gz
    -> OUT/funnel.json, OUT/card.md + card.png

A finished stage leaves OUT/_stage.json and is skipped with the same settings. A killed one resumes: the
plan is deterministic, datatrove's completion files skip finished tasks, and the teacher's answer cache
(default OUT/../teacher_cache.sqlite, kept across settings) answers every request it has seen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from datatrove.pipeline.writers import JsonlWriter

from ...io import write_json, write_jsonl
from ...stages import Stages
from .. import DataError
from ..decontam import build_index
from ..sources import iter_documents
from ..stage import reset, run_pipeline
from .card import write_card
from .prompts import KINDS, plan
from .seeds import best_documents, mine_topics, read_topics
from .step import SynthSettings, SynthStep
from .verify import FUNNEL

MARKER = "_stage.json"


@dataclass
class SynthConfig:
    requests: int = 60
    kinds: tuple[str, ...] = KINDS
    topics_file: str | None = None  # one topic a line; None: mined from IN's best documents
    seed_docs: int = (
        2000  # best documents of IN: topics come from them, the synthetic set is deduped against them
    )
    max_topics: int = 200
    settings: SynthSettings = field(default_factory=SynthSettings)
    decontam_n: int = 13
    humaneval: bool = True
    benchmarks: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds or self.requests < 1:
            raise DataError(
                f"synth: need requests >= 1 and kinds from {KINDS}; got {self.requests}, {self.kinds}"
            )


def synthesize(
    in_dir, out, cfg: SynthConfig, tasks: int = 1, workers: int = 1, executor: str | None = None, opts=None
) -> dict:
    """Run the synthetic stage (see the module docstring); returns the funnel and what was kept.

    `executor`: local, slurm or ray (None: the process default, `--executor` on the command line)."""
    in_dir, out = Path(in_dir), Path(out)
    work = out.with_name(out.name + ".work")
    teacher = cfg.settings.teacher
    if not teacher.url and not teacher.local:
        raise DataError("synth: give a teacher (an endpoint url or an in-process model)")
    if not teacher.cache_path:  # answers were paid for: keep them beside the output, across settings
        teacher = replace(teacher, cache_path=str(out.parent / "teacher_cache.sqlite"))
        cfg = replace(cfg, settings=replace(cfg.settings, teacher=teacher))
    settings = {"in": str(in_dir), "tasks": tasks, **asdict(cfg)}
    done = Stages(lambda _: out / MARKER).done("synth", settings)
    if done is not None:
        return done["result"]
    t0 = time.time()
    marks = Stages(work)
    if marks.record("settings") is not None and marks.done("settings", settings) is None:
        reset(work, out)  # a half-finished run with other settings: its tasks' outputs must not mix in
    marks.mark("settings", settings, None)
    topics, seeds = _topics(in_dir, cfg)
    plans = plan(topics, cfg.requests, tuple(cfg.kinds), cfg.seed)
    write_jsonl(work / "plan.jsonl", [asdict(p) for p in plans])
    write_json(work / "topics.json", topics)
    steps = [SynthStep(str(work / "plan.jsonl"), cfg.settings, cfg.seed), JsonlWriter(str(work / "verified"))]
    stats = run_pipeline(steps, work / "logs", tasks, workers, executor=executor, opts=opts)
    counts = next(v for k, v in stats.items() if k.endswith(SynthStep.name))
    verified = work / "verified"  # a run that verified nothing wrote no file there
    docs = list(iter_documents(verified)) if any(verified.glob("*.jsonl*")) else []
    docs.sort(key=lambda d: d.metadata["request"])
    kept, dropped = _dedup(docs, seeds, cfg)
    kept, dropped["contaminated"] = _decontam(kept, cfg)
    result = _funnel(counts, docs, kept, dropped)
    result.update(
        topics_available=len(topics), seconds=round(time.time() - t0, 1), teacher=_teacher_name(docs)
    )
    write_jsonl(out / "00000.jsonl.gz", [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in kept])
    write_card(out, result, kept, plans)  # adds diversity, topics and tokens per kind to the result
    write_json(out / "funnel.json", result)
    if result["dropped"].get("teacher error"):
        # not done: a re-run asks the failed requests again (and gets the others from the cache for free)
        reset(work / "logs", work / "verified")
        return result
    Stages(lambda _: out / MARKER).mark("synth", settings, result, time.time() - t0)
    return result


def _topics(in_dir: Path, cfg: SynthConfig) -> tuple[list[str], list]:
    if cfg.topics_file:
        return read_topics(cfg.topics_file), best_documents(in_dir, cfg.seed_docs)
    return mine_topics(in_dir, cfg.seed_docs, cfg.max_topics)


def _teacher_name(docs) -> str | None:
    return docs[0].metadata["teacher"] if docs else None


def _dedup(docs: list, seeds: list, cfg: SynthConfig) -> tuple[list, dict]:
    """MinHash LSH (the corpus dedup's settings): drop a document sharing a band with a seed or an earlier one."""
    from datatrove.pipeline.dedup import MinhashDedupSignature

    from ..dedup import CodeWordTokenizer, DedupConfig

    mh = MinhashDedupSignature("/nonexistent", DedupConfig().minhash_config(), language=CodeWordTokenizer())

    def bands(text: str) -> set:
        sh = mh.get_shingles(text)
        if len(sh) == 0:  # shorter than one n-gram: its exact text stands for it
            return {("exact", text.strip())}
        return {(i, tuple(b)) for i, b in enumerate(mh.get_signature(sh))}

    seen_seed = set().union(*(bands(d.text) for d in seeds)) if seeds else set()
    seen, kept, dropped = set(), [], {"duplicate of a seed": 0, "duplicate within": 0}
    for d in docs:
        b = bands(d.text)
        if b & seen_seed:
            dropped["duplicate of a seed"] += 1
        elif b & seen:
            dropped["duplicate within"] += 1
        else:
            kept.append(d)
            seen |= b
    return kept, dropped


def _decontam(docs: list, cfg: SynthConfig) -> tuple[list, int]:
    """Drop documents sharing an n-gram with an eval item (HumanEval + benchmarks), like the filtered data."""
    if not cfg.humaneval and not cfg.benchmarks:
        return docs, 0
    index = build_index(cfg.decontam_n, cfg.humaneval, tuple(cfg.benchmarks))
    kept = [d for d in docs if index.match(d.text) is None]
    return kept, len(docs) - len(kept)


def _funnel(counts: dict, verified: list, kept: list, dropped: dict) -> dict:
    """The funnel (total and per kind) from the step's counters and what dedup/decontam left."""
    kinds = sorted({k.split("/")[1] for k in counts if "/" in k and not k.startswith("dropped: ")})
    per_kind = {}
    for kind in kinds:
        row = {s: int(counts.get(f"{s}/{kind}", 0)) for s in FUNNEL[:6]}
        row["verified"] = sum(d.metadata["kind"] == kind for d in verified)
        row["kept"] = sum(d.metadata["kind"] == kind for d in kept)
        per_kind[kind] = row
    funnel = {s: int(counts.get(s, 0)) for s in FUNNEL[:6]}
    funnel["deduplicated"] = len(verified) - dropped["duplicate of a seed"] - dropped["duplicate within"]
    funnel["kept"] = len(kept)
    reasons = {k.removeprefix("dropped: "): int(v) for k, v in counts.items() if k.startswith("dropped: ")}
    return {"funnel": funnel, "per_kind": per_kind, "dropped": reasons | dropped, "docs_out": len(kept)}
