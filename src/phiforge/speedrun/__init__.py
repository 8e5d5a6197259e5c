"""`phiforge speedrun`: run.py wires the library's stages under named budgets; report.py writes the report."""

from .run import BUDGETS, Budget, SpeedrunConfig, config_from, run

__all__ = ["BUDGETS", "Budget", "SpeedrunConfig", "config_from", "run"]
