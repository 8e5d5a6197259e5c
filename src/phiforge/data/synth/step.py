"""`SynthStep`: the teacher writes, the sandbox checks, one revision round; a datatrove step.

Task `rank` of `world_size` takes every world_size-th request of the plan, so any number of tasks (local
processes, slurm array jobs, ray tasks) makes the same set. Answers go through the one LLM client, whose
sqlite cache keeps every answer the moment it arrives: a killed task re-run pays only for the requests
that were in flight. The funnel is counted with datatrove's stats (`stat_update`), summed over tasks.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from ...sandbox import Limits
from ..annotate import TeacherConfig, make_client
from . import verify as v
from .prompts import Plan


@dataclass
class SynthSettings:
    """What one request costs and how it is checked (the plan says what is asked)."""

    max_tokens: int = 256  # enough for an exercise or a short section; a 135M teacher rambles past it
    temperature: float = 0.7
    batch: int = 32  # requests asked together (the in-process teacher batches 8 of them at a time)
    timeout: float = 5.0  # sandbox wall-clock seconds per program
    memory_mb: int = 512
    sandbox_workers: int = 2
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


class SynthStep(PipelineStep):
    name = "🧑‍🏫 synthesize + verify"
    type = "📖 - READER"

    def __init__(self, plan_file: str, settings: SynthSettings, seed: int = 0):
        super().__init__()
        self.plan_file, self.s, self.seed = str(plan_file), settings, seed

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with open(self.plan_file, encoding="utf-8") as f:
            plans = [Plan(**json.loads(line)) for line in f][rank::world_size]
        client = make_client(self.s.teacher)
        kept, t0 = 0, time.time()
        try:
            for i in range(0, len(plans), self.s.batch):
                out = synth_batch(client, plans[i : i + self.s.batch], self.s, self.seed)
                for k, v in (out.counts | {f"dropped: {r}": n for r, n in out.dropped.items()}).items():
                    self.stat_update(k, value=v)
                for c in out.kept:
                    yield _document(c, client.name)
                kept += len(out.kept)
                done = min(i + self.s.batch, len(plans))  # a line per batch: a batch takes minutes on a CPU
                print(f"  synth task {rank}: {done}/{len(plans)} requests, {kept} verified, "
                      f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            client.close()


def _document(c: v.Candidate, teacher: str) -> Document:
    p = c.plan
    meta = {"source": "synthetic", "kind": p.kind, "topic": p.topic, "audience": p.audience,
            "style": p.style, "teacher": teacher, "verified": c.program is not None,
            "revised": c.revised, "request": p.index}  # fmt: skip
    return Document(text=c.text, id=p.id, metadata=meta)


def synth_batch(client, plans: list[Plan], s: SynthSettings, seed: int = 0) -> v.Outcome:
    """Ask, read, run, revise once, run again: the kept candidates and the funnel of this batch."""
    kw = {"max_tokens": s.max_tokens, "temperature": s.temperature, "seed": seed}
    limits = Limits(timeout=s.timeout, cpu_seconds=max(1, int(s.timeout)), memory_mb=s.memory_mb)
    out = v.Outcome()
    answers = client.ask([p.request(**kw) for p in plans])
    # (plan, candidate, answer, problem, reason): what gets one revision round
    fixes: list[tuple[Plan, v.Candidate | None, str, str, str]] = []
    cands = []
    for p, a in zip(plans, answers, strict=True):
        out.count("requested", p.kind)
        if not a.ok:
            out.dropped["teacher error"] += 1
            continue
        out.count("answered", p.kind)
        c = v.candidate(p, a.text)
        if isinstance(c, str):
            if p.kind == "exercise":  # code without tests (or no code): the teacher is told what is missing
                fixes.append((p, None, a.text, c, c.split(":")[0]))
            else:  # prose with no code or no Q/A: nothing for a revision to fix
                out.dropped[c] += 1
            continue
        out.count("parsed", p.kind)
        cands.append(c)
    for c, (status, detail) in zip(cands, v.run_programs(cands, limits, s.sandbox_workers), strict=True):
        if status in ("passed", "failed"):
            out.count("ran", c.plan.kind)
        if status == "passed":
            out.count("passed", c.plan.kind)
            out.kept.append(c)
        else:
            fixes.append((c.plan, c, "", v.problem(status, detail), v.reason(status, detail)))
    _revise(client, fixes, kw, limits, s, out)
    return out


def _revise(client, fixes, kw, limits, s: SynthSettings, out: v.Outcome) -> None:
    """One self-revision round for every failure that had something to fix; only passing ones are kept."""
    if not fixes:
        return
    answers = client.ask([v.revise_request(c, p, a, err, **kw) for p, c, a, err, _ in fixes])
    second = []
    for (p, c, _, _, why), ans in zip(fixes, answers, strict=True):
        r = v.revised(c, p, ans.text) if ans.ok else "teacher error"
        if isinstance(r, str):
            out.dropped[why] += 1  # counted under the first round's problem: that is what lost it
            continue
        second.append((r, why))
    results = v.run_programs([r for r, _ in second], limits, s.sandbox_workers)
    for (r, why), (status, _) in zip(second, results, strict=True):
        if status == "passed":
            out.count("revised", r.plan.kind)
            out.kept.append(r)
        else:
            out.dropped[why] += 1
