"""`phiforge train`, `phiforge sft` and `phiforge plot`: thin wrappers over phiforge.train.

All three run unchanged under `torchrun --nproc_per_node N -m phiforge.cli train ...` (DDP, or FSDP2
with `--set fsdp=true`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer

from .infer import MODEL_HELP

_SET = typer.Option(
    None,
    "--set",
    help="Override a recipe field: key=value, dotted for nesting (phases.0.tokens=2e6). Repeatable.",
)


def hf_dir(spec: str, out: Path) -> str:
    """Training reads and writes HF-layout directories: a .gguf file or short name is converted once (fp32,
    dequantized) to OUT/base/<name>, and that directory is the starting point."""
    from ..infer.load import resolve

    path = resolve(spec)
    if path.is_dir():
        return str(path)
    from ..infer.gguf_import import convert_gguf

    base = Path(out) / "base" / path.stem
    if not base.is_dir():  # converted beside, renamed when complete: a killed run leaves no half model
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_gguf(path, tmp)
        tmp.rename(base)
    return str(base)


def train_cmd(
    recipe: Path = typer.Option(..., "--recipe", "-r", help="YAML recipe (see recipes/tiny-cpu.yaml)."),
    set_: list[str] = _SET,
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in OUT/ckpt."),
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
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: Path = typer.Option(
        ..., "--data", "-d", help='jsonl, one {"messages": [{role, content}, ...]} per line.'
    ),
    out: Path = typer.Option(Path("runs/sft"), help="Run directory (metrics.jsonl, ckpt/)."),
    val_data: Path = typer.Option(None, help="Validation conversations (same format)."),
    recipe: Path = typer.Option(
        None, "--recipe", "-r", help="Optional YAML with TrainConfig fields (lr, seq_len...)."
    ),
    set_: list[str] = _SET,
    epochs: float = typer.Option(None, help="Passes over the data (default: recipe's sft_epochs, 1)."),
    lr: float = typer.Option(None, help="Peak learning rate (default 1e-3 without a recipe)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in OUT/ckpt."),
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
    app.command("plot")(plot_cmd)
