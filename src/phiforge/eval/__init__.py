"""Evaluation: benchmark tasks, metrics, reports, an lm-eval adapter (model-written code runs in phiforge.sandbox)."""

from __future__ import annotations


def run(model_dir, tasks, data_dir=None, limit=None, out=None, **kw) -> dict:
    """Evaluate a model directory on tasks; see phiforge.eval.harness.run."""
    from .harness import run as _run

    return _run(model_dir, tasks, data_dir=data_dir, limit=limit, out=out, **kw)


__all__ = ["run"]
