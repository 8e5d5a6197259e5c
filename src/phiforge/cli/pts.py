"""`phiforge pts`: Pivotal Token Search pairs (TRL's {"prompt", "chosen", "rejected"} jsonl) for `phiforge dpo`;
a thin wrapper over phiforge.train.pts."""

from __future__ import annotations

from pathlib import Path

import typer

from ..eval.tasks.arith import Knobs


def pts_cmd(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Model: HF-layout directory, .gguf file or short name (smollm2-135m-instruct).",
    ),
    task: str = typer.Option("arith", help="arith | gsm8k | code"),
    data: Path = typer.Option(
        None, "--data", help="gsm8k: train.jsonl or its folder; code: jsonl of {prompt, tests}; arith: none."
    ),
    out: Path = typer.Option(
        Path("runs/pts/pairs.jsonl"), help="PTS pairs (jsonl); cache, state, whole pairs beside it."
    ),
    limit: int = typer.Option(
        50,
        help="Problems to sample (arith: train problems 0..N-1); 50 x K=8 on a 135M model: ~8 min on 2 cores.",
    ),
    samples: int = typer.Option(8, "--samples", "-k", help="K: rollouts per prefix."),
    p_gap: float = typer.Option(0.2, help="A token is pivotal when it moves p(success) by at least this."),
    p_min: float = typer.Option(0.2, help="Keep problems with p(success) >= this ..."),
    p_max: float = typer.Option(0.8, help="... and <= this."),
    temperature: float = typer.Option(0.7, help="Rollout sampling temperature."),
    max_batch: int = typer.Option(64, help="Rows per engine call."),
    steps: int = typer.Option(Knobs.steps, help="arith: operations per problem."),
    max_operand: int = typer.Option(Knobs.max_operand, help="arith: largest operand."),
    ops: str = typer.Option(Knobs.ops, help="arith: operations to draw from (+-*)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda ..."),
):
    """Find pivotal tokens in the model's own answers and write DPO pairs at them, plus as many whole-answer pairs."""
    from functools import partial

    from ..infer.engine import Engine
    from ..io import progress_bar
    from ..train import pts, pts_tasks

    cfg = pts.PTSConfig(
        samples=samples,
        p_gap=p_gap,
        p_min=p_min,
        p_max=p_max,
        temperature=temperature,
        max_batch=max_batch,
        seed=seed,
    )
    problems = pts_tasks.load(task, data, limit, Knobs(steps, max_operand, ops))
    import torch

    # batched sampling: a GGUF's int4 blocks would be dequantized on every multi-row forward (infer/quant.py),
    # so dequantize once at load, as the in-process teacher does (a phiforge-quantized dir stays as it is)
    engine = Engine.load(model, device=device, dtype=torch.float32)
    if engine.tok is None:
        raise ValueError(f"{model}: no tokenizer.json (PTS renders questions through the chat template)")
    check = partial(pts_tasks.check_many, task)
    with progress_bar() as prog:
        stats = pts.run(
            engine,
            problems,
            check,
            out,
            cfg,
            task=task,
            model_key=pts.model_key(model),
            progress=pts.progress_to(prog, len(problems), samples),
        )
    print(
        f"problems {stats.problems}, kept in [{p_min}, {p_max}] {stats.kept}, pivotal tokens {stats.pivotal} "
        f"({stats.no_alternative} without a contrasting alternative), pairs written {stats.pairs}, "
        f"whole-answer pairs {stats.whole_pairs}, rollouts {stats.rollouts} generated + {stats.cached} cached, "
        f"{stats.seconds:.0f}s"
    )
    print(f"pairs: {out}\nwhole-answer pairs: {pts.paths(out)['whole']}")


def register(app: typer.Typer) -> None:
    app.command("pts")(pts_cmd)
