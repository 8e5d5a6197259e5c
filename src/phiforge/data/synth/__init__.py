"""Synthetic textbooks, exercises and Q/A written by a teacher and verified by execution (phi-1's
CodeTextbook and CodeExercises, Phi-4's seeded, self-revised synthetic data).

    seeds.py    topics mined from the best documents of a filtered corpus (or a topic list)
    prompts.py  what is asked (kind x topic x audience x style) and how answers are read
    verify.py   what must run, the sandbox verdicts, one self-revision round
    step.py     SynthStep: a datatrove step, so local / slurm / ray executors all run it
    run.py      `phiforge data synth IN OUT`: plan -> step -> dedup -> decontaminate -> documents + funnel
    card.py     the funnel table and plot, diversity, tokens per kind, samples
"""

from .run import SynthConfig, synthesize
from .step import SynthSettings, SynthStep

__all__ = ["SynthConfig", "SynthSettings", "SynthStep", "synthesize"]
