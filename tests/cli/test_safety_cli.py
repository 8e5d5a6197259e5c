"""`phiforge eval`'s judge options and `phiforge safety pairs` as a user runs them."""

from __future__ import annotations

import pytest


def test_judge_options_and_safety_pairs_help(phiforge):
    assert "--judge-url" in phiforge("eval", "--help").stdout
    out = phiforge("safety", "pairs", "--help").stdout
    assert "--out" in out and "--samples" in out


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_safety_pairs_without_the_data(random_model_dir, tmp_path, phiforge, one_line_error):
    missing = tmp_path / "no_benchmarks"
    r = phiforge("safety", "pairs", "-m", random_model_dir, "--data", missing, "--out", tmp_path / "pairs")
    one_line_error(r, "Do-Not-Answer file not found", str(missing))
