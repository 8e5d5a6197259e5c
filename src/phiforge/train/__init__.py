"""Training: recipes (config.py), the loop (loop.py), data mixtures (mixture.py), SFT packing (sft.py),
checkpoints with exact resume (checkpoint.py), DDP/FSDP2 (dist.py) and the entry points (pretrain.py)."""

from .config import Dataset, Phase, RecipeError, TrainConfig, from_dict, load_recipe
from .loop import TrainingError, TrainingInterrupted, lr_at
from .mixture import TrainDataError
from .pretrain import dry_run, pretrain, print_dry_run, sft

__all__ = [
    "Dataset",
    "Phase",
    "RecipeError",
    "TrainConfig",
    "TrainDataError",
    "TrainingError",
    "TrainingInterrupted",
    "dry_run",
    "from_dict",
    "load_recipe",
    "lr_at",
    "pretrain",
    "print_dry_run",
    "sft",
]
