"""Evaluation: benchmark tasks, a sandbox for model-written code, metrics, reports, an lm-eval adapter."""

from __future__ import annotations


def run(model_dir, tasks, data_dir=None, limit=None, out=None, **kw) -> dict:
    """Evaluate a model directory on tasks; see phiforge.eval.harness.run."""
    from .harness import run as _run

    return _run(model_dir, tasks, data_dir=data_dir, limit=limit, out=out, **kw)


def bits_per_byte(engine, texts) -> float:
    """Bits per UTF-8 byte of `texts` under the engine's model (phiforge.infer.score.bits_per_byte)."""
    from ..infer.score import bits_per_byte as _bpb

    return _bpb(engine, texts)


def humaneval_solutions() -> list[str]:
    """prompt + canonical_solution of the 164 HumanEval problems (the speedrun's bits-per-byte text)."""
    from .tasks.code import load_humaneval

    return [it.prompt + it.meta["canonical_solution"] for it in load_humaneval(None, None, 0)]


__all__ = ["bits_per_byte", "humaneval_solutions", "run"]
