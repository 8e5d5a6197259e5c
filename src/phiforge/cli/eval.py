"""`phiforge eval`: the Phi benchmarks on a model directory; `phiforge lm-eval`: lm-eval's CLI with the
phiforge model registered. Both call library functions (phiforge.eval.harness, .lm_eval_adapter)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..eval.tasks import registry
from .infer import MODEL_HELP

# the task registry is the only task list; 'all' is the benchmark table, while the judged tasks (safety_refusal,
# xstest, toxicity, mt_bench: long, and graded by a judge, see --judge-url) run when named
ALL = ",".join(n for n, t in registry().items() if t.kind not in ("judged", "mt_bench"))


def _shots(values: list[str] | None) -> dict[str, int]:
    out = {}
    for v in values or []:
        name, _, n = v.partition("=")
        if not n.strip().isdigit():
            raise ValueError(f"--shots expects TASK=N, got {v!r}")
        out[name.strip()] = int(n)
    return out


def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    tasks: str = typer.Option("sanity", help=f"Comma-separated tasks, or 'all' ({ALL})."),
    data: Path = typer.Option(
        None, "--data", help="Benchmarks folder (humaneval/, gsm8k/, mmlu/, ... as in shared/benchmarks)."
    ),
    limit: int = typer.Option(None, help="Items per task (per subject for MMLU, per subtask for BBH)."),
    out: Path = typer.Option(
        None, help="Run directory: reports go to OUT/eval/ (reruns reuse finished tasks)."
    ),
    shots: list[str] = typer.Option(None, help="Override few-shot count: TASK=N (repeatable)."),
    n_samples: int = typer.Option(
        1, help="Generations per prompt (pass@10 needs >= 10 and --temperature > 0)."
    ),
    temperature: float = typer.Option(0.0, help="Sampling temperature for generative tasks; 0 = greedy."),
    max_new_tokens: int = typer.Option(None, help="Override each task's generation budget."),
    batch_size: int = typer.Option(8, help="Prompts per generate call."),
    workers: int = typer.Option(None, help="Parallel sandboxes for code execution (default: CPU count)."),
    timeout: float = typer.Option(10.0, help="Seconds per executed program."),
    seed: int = typer.Option(0, help="Sampling seed."),
    device: str = typer.Option("cpu", help="Where the model runs: cpu, cuda, cuda:1 ..."),
    judge_url: str = typer.Option(
        None,
        help="OpenAI-compatible judge for safety_refusal/xstest/toxicity/mt_bench (default: offline judge).",
    ),
    judge_model: str = typer.Option(None, help="Model name the judge endpoint serves."),
    dtype: str = typer.Option(
        None,
        help="float32: dequantize a GGUF's int4/int8 weights (faster scoring on CPU). Default: as stored.",
    ),
):
    """Evaluate a model on the Phi benchmarks; print the table; write JSON, markdown and samples to OUT/eval/."""
    from ..eval.harness import markdown, run, settings_table

    names = ALL if tasks == "all" else tasks
    shots = _shots(shots)
    print(settings_table(names, shots))
    kw = dict(
        shots=shots,
        n_samples=n_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        timeout=timeout,
        seed=seed,
        device=device,
        judge_url=judge_url,
        judge_model=judge_model,
        dtype=dtype,
    )
    if workers:
        kw["workers"] = workers
    report = run(model, names, data_dir=data, limit=limit, out=out, **kw)
    print(markdown(report).split("\n## ")[0])
    if out:
        print(f"reports: {Path(out) / 'eval'}")


def lm_eval_cmd(ctx: typer.Context):
    """lm-evaluation-harness with --model phiforge available; all arguments go to lm_eval."""
    from ..eval.lm_eval_adapter import main

    main(list(ctx.args))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command(
        "lm-eval",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(lm_eval_cmd)
