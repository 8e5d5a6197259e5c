"""`phiforge speedrun`: the main job (phi-1 at home, end to end)."""

from __future__ import annotations

from pathlib import Path

import typer


def speedrun(
    out: Path = typer.Option(
        Path("runs/speedrun"), help="Run directory; re-running it skips finished stages."
    ),
    budget: str = typer.Option(
        "default", help="smoke (< 5 min, CI), default (<= 40 min on 2 cores) or long (an evening)."
    ),
    teacher_url: str = typer.Option(
        None,
        help="OpenAI-compatible endpoint of the teacher LLM (key in $PHIFORGE_TEACHER_KEY); "
        "default: the offline heuristic annotator.",
    ),
    teacher_model: str = typer.Option("gpt-4o-mini", help="Teacher model name at --teacher-url."),
    teacher: str = typer.Option(
        None,
        "--teacher",
        help="Teacher run in this process: a short name (smollm2-135m-instruct), model directory or .gguf.",
    ),
    teacher_method: str = typer.Option(
        "text", help="text, geval or askllm (see `phiforge data annotate --help`)."
    ),
    ablate_quality: bool = typer.Option(
        False,
        "--ablate-quality",
        help="Also train the same model for the same tokens on filtered vs unfiltered code (and filtered + "
        "synthetic when there is a synth stage) and compare them in the report (2-3x the pretraining time).",
    ),
    synth_requests: int = typer.Option(
        None,
        help="Synthetic textbook/exercise/QA requests for phase 2 (default: the budget's; 0: no synth stage). "
        "The teacher: --teacher-url, else --teacher, else the embedded SmolLM2-135M-Instruct.",
    ),
    annotate_docs: int = typer.Option(
        None,
        help="Documents the teacher labels for the quality classifier (default: the budget's: 600 smoke, "
        "3000 default). An in-process LLM teacher takes seconds per document on a CPU.",
    ),
    keep_fraction: float = typer.Option(
        None,
        help="Keep this top fraction of the corpus by quality score instead of score >= 3 (see `phiforge data "
        "run --help`); the LLM teachers' probability scores rank documents but rarely reach 3.",
    ),
    benchmark: list[str] = typer.Option(
        [], help="Extra eval files/folders to decontaminate against (HumanEval always). Repeatable."
    ),
    seed: int = typer.Option(0, help="Seed for sampling, initialisation and data order."),
):
    """Corpus -> quality data -> tokenizer -> 2-phase pretraining -> SFT -> eval -> int4 -> HF + GGUF -> report;
    beside it, the real model (SmolLM2-135M-Instruct) -> PTS -> DPO -> int4, measured at each step."""
    from ..speedrun import config_from, run

    if teacher and teacher_url:
        raise ValueError("--teacher (in-process) and --teacher-url (endpoint): give one, not both")
    if teacher:
        from ..infer.load import resolve

        resolve(teacher)  # fail now, not after the harvest
    cfg = config_from(out=str(out), budget=budget, teacher_url=teacher_url, teacher_model=teacher_model,
                      teacher_local=teacher, teacher_method=teacher_method, ablate_quality=ablate_quality, synth_requests=synth_requests, annotate_docs=annotate_docs, keep_fraction=keep_fraction, benchmarks=tuple(benchmark), seed=seed)  # fmt: skip
    run(cfg)


def register(app: typer.Typer) -> None:
    app.command("speedrun")(speedrun)
