"""`phiforge train`, `phiforge sft`, `phiforge dpo` and `phiforge plot`: thin wrappers over phiforge.train.

All run unchanged under `torchrun --nproc_per_node N -m phiforge.cli train ...` (DDP, or FSDP2
with `--set fsdp=true`).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .infer import MODEL_HELP

_SET = typer.Option(
    None,
    "--set",
    help="Override a recipe field: key=value, dotted for nesting (phases.0.tokens=2e6). Repeatable.",
)
_RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in OUT/ckpt.")


def _fine_tune_inputs(model_help: str, data_help: str, run: str) -> tuple:
    """The --model, --data and --out options `sft` and `dpo` share (defaults for their signatures)."""
    return (
        typer.Option(..., "--model", "-m", help=f"{model_help}: {MODEL_HELP}"),
        typer.Option(..., "--data", "-d", help=data_help),
        typer.Option(Path(f"runs/{run}"), help="Run directory (metrics.jsonl, ckpt/)."),
    )


_SFT_MODEL, _SFT_DATA, _SFT_OUT = _fine_tune_inputs(
    "Checkpoint to fine-tune", 'jsonl, one {"messages": [{role, content}, ...]} per line.', "sft"
)
_DPO_MODEL, _DPO_DATA, _DPO_OUT = _fine_tune_inputs(
    "Starting checkpoint", 'jsonl of {"prompt", "chosen", "rejected"}: text, or lists of messages.', "dpo"
)


def hf_dir(spec: str, out: Path) -> str:
    """Training reads and writes HF-layout directories: a .gguf file or short name is converted once (fp32,
    dequantized) to OUT/base/<name>, and that directory is the starting point."""
    from ..infer.load import resolve

    path = resolve(spec)
    if path.is_dir():
        return str(path)
    from ..infer.gguf_import import convert_once

    return str(convert_once(path, Path(out) / "base" / path.stem))


def train_cmd(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="YAML recipe (see recipes/tiny-cpu.yaml)."),
    set_: list[str] = _SET,
    resume: bool = _RESUME,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print params, memory, tokens, FLOPs and time estimate; train nothing."
    ),
    world: int = typer.Option(1, help="--dry-run: number of processes to estimate for."),
    peak_flops: float = typer.Option(
        None, help="Per-process peak FLOP/s for MFU and --dry-run (default: measure the fp32 matmul peak)."
    ),
):
    """Pretrain through the recipe's phases (weighted dataset mixtures, token budgets, per-dataset val loss).

    Writes OUT/metrics.jsonl and OUT/ckpt/step_*/ (Hugging Face layout + trainer_state.pt). SIGTERM or
    Ctrl-C saves a checkpoint first; --resume then continues with exactly the same losses.
    """
    from ..train import dry_run as dry
    from ..train import load_recipe, pretrain, print_dry_run

    overrides = list(set_ or [])
    if peak_flops:
        overrides.append(f"peak_flops={peak_flops}")
    cfg = load_recipe(recipe, overrides)
    if cfg.init_from:
        cfg.init_from = hf_dir(cfg.init_from, Path(cfg.out))
    if dry_run:
        print_dry_run(dry(cfg, world=world, peak_flops=peak_flops))
        return
    path = pretrain(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(path)


def sft_cmd(
    model: str = _SFT_MODEL,
    data: Path = _SFT_DATA,
    out: Path = _SFT_OUT,
    val_data: Path = typer.Option(None, help="Validation conversations (same format)."),
    recipe: Path = typer.Option(
        None, "--recipe", "-r", help="Optional YAML with TrainConfig fields (lr, seq_len...)."
    ),
    set_: list[str] = _SET,
    epochs: float = typer.Option(None, help="Passes over the data (default: recipe's sft_epochs, 1)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 1e-3 without a recipe)."),
    resume: bool = _RESUME,
):
    """Supervised fine-tuning on chat conversations: the model's own chat template, loss on assistant tokens
    only, packing."""
    from ..train import from_dict, load_recipe, sft

    base = {"lr": 1e-3, "warmup_steps": 5, "eval_every": 0, "save_every": 0}
    overrides = list(set_ or []) + [f"out={out}"]
    if epochs is not None:
        overrides.append(f"sft_epochs={epochs}")
    if lr is not None:
        overrides.append(f"lr={lr}")
    cfg = load_recipe(recipe, overrides) if recipe else from_dict(base, overrides)
    path = sft(hf_dir(model, Path(cfg.out)), data, cfg, resume=resume, val_data=val_data)
    if os.environ.get("RANK", "0") == "0":
        print(path)


def dpo_cmd(
    model: str = _DPO_MODEL,
    data: Path = _DPO_DATA,
    out: Path = _DPO_OUT,
    loss_type: str = typer.Option("sigmoid", help="sigmoid (DPO) or ipo."),
    beta: float = typer.Option(0.1, help="Strength of the pull towards the reference model."),
    sft_weight: float = typer.Option(0.0, help="Weight of an added NLL loss on the chosen completions."),
    epochs: float = typer.Option(1.0, help="Passes over the pairs."),
    lr: float = typer.Option(None, help="Peak learning rate (default 1e-6, TRL's, without a recipe)."),
    recipe: Path = typer.Option(
        None, "--recipe", "-r", help="Optional YAML with TrainConfig fields (lr, seq_len, micro_batch...)."
    ),
    set_: list[str] = _SET,
    resume: bool = _RESUME,
):
    """Direct preference optimisation (TRL's losses and metric names) from MODEL on preference pairs.

    The reference log-probabilities are computed once by MODEL and stored beside DATA
    (DATA.ref-<fingerprint>.jsonl); a re-run or --resume reuses them. Metrics: loss, rewards/chosen,
    rewards/rejected, rewards/margins, rewards/accuracies, logps/*; `phiforge plot OUT` draws them.
    """
    from ..train import pretrain
    from ..train.config import read_recipe
    from ..train.dpo import train_config

    overrides = list(set_ or []) + ([f"lr={lr}"] if lr is not None else [])
    cfg = train_config(hf_dir(model, out), data, out, loss_type=loss_type, beta=beta, sft_weight=sft_weight,
                       epochs=epochs, base=read_recipe(recipe) if recipe else None, overrides=overrides,
                       where=str(recipe or "dpo"))  # fmt: skip
    path = pretrain(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":
        print(path)


def plot_cmd(
    run: Path = typer.Argument(..., help="Run directory holding metrics.jsonl."),
    out: Path = typer.Option(None, help="Output folder (default RUN/plots)."),
):
    """Loss (train + validation per dataset) and learning-rate curves as PNGs."""
    from ..train.plot import plot_run

    for p in plot_run(run, out):
        print(p)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
    app.command("sft")(sft_cmd)
    app.command("dpo")(dpo_cmd)
    app.command("plot")(plot_cmd)
