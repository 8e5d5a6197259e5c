"""The shipped recipes parse and size correctly (`phiforge train --dry-run`): nothing is allocated or trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from phiforge.train import dry_run, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


def test_the_scale_recipes_are_shipped():
    assert {"phi1-1b3.yaml", "phi3-mini.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_dry_run(recipe):
    r = dry_run(load_recipe(recipe), world=8, peak_flops=989e12)
    assert r["params"] > 0 and r["tokens_trained"] >= r["tokens"] > 0
    # training FLOPs are 6ND plus attention, counted without the embedding lookup: within 20% of 6ND
    assert 0.8 < r["flops"] / r["flops_6ND"] < 1.3
    assert r["memory_bytes"]["total"] > r["memory_bytes"]["weights"]


def test_phi_scale_recipes_match_the_published_models():
    phi1 = dry_run(load_recipe(RECIPES[0].with_name("phi1-1b3.yaml")), world=8, peak_flops=989e12)
    assert phi1["model"].num_hidden_layers == 24 and phi1["model"].hidden_size == 2048
    assert phi1["model"].num_attention_heads == 32 and 1.3e9 < phi1["params"] < 1.45e9
    assert phi1["memory_bytes"]["total"] < 80 * 2**30  # fits one 80 GB GPU as written (DDP)
    mini = dry_run(load_recipe(RECIPES[0].with_name("phi3-mini.yaml")), world=512, peak_flops=989e12)
    assert mini["params"] == 3_821_079_552  # Phi-3-mini, as transformers counts it
    assert sum(p.tokens for p in load_recipe(RECIPES[0].with_name("phi3-mini.yaml")).phases) == 3.3e12


def test_cli_dry_run_prints_the_estimate(phiforge):
    out = phiforge("train", "--recipe", RECIPES[0].with_name("phi1-1b3.yaml"), "--dry-run", "--world", "8",
                   "--peak-flops", "989e12")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "1,418,270,720" in out.stdout and "estimated time" in out.stdout
