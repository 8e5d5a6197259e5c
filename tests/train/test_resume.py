"""Exact resume: a run killed mid-way (SIGKILL, or SIGTERM which saves first) and resumed logs the same
per-step losses, bit for bit, as a run that was never interrupted."""

import signal
import subprocess
import time

import pytest

from phiforge.train.checkpoint import list_checkpoints
from train_helpers import cli, env, recipe, run, train_losses, write_recipe

STEPS = 24


def _recipe(train_data, tmp_path, name):
    r = recipe(train_data, tmp_path / name, save_every=4, eval_every=5, keep_last=2)
    r["model_overrides"] = {**r["model_overrides"], "dropout": 0.1}  # RNG state must be restored too
    r["phases"][0]["tokens"] = 12 * 256
    r["phases"][1]["tokens"] = 12 * 256
    return write_recipe(tmp_path / f"{name}.yaml", r)


@pytest.fixture(scope="module")
def reference(train_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    p = run("train", "--recipe", _recipe(train_data, tmp, "ref"))
    assert p.returncode == 0, p.stderr
    losses = train_losses(tmp / "ref")
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    return losses


def _interrupt(recipe_path, run_dir, sig, after_step):
    proc = subprocess.Popen(
        cli("train", "--recipe", recipe_path), env=env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(train_losses(run_dir)) >= after_step:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_kill9_then_resume_matches_uninterrupted(train_data, tmp_path, reference):
    r = _recipe(train_data, tmp_path, "run")
    rc, _ = _interrupt(r, tmp_path / "run", signal.SIGKILL, after_step=10)
    assert rc == -signal.SIGKILL
    done = train_losses(tmp_path / "run")
    assert len(done) < STEPS
    last = list_checkpoints(tmp_path / "run/ckpt")[-1]
    p = run("train", "--recipe", r, "--resume")
    assert p.returncode == 0, p.stderr
    assert f"resuming from {last}" in p.stderr.replace("\n", "")
    assert train_losses(tmp_path / "run") == reference  # exactly, not approximately


@pytest.mark.slow  # subprocesses / real model / end-to-end: make test-fast skips it
def test_sigterm_saves_then_resume_matches(train_data, tmp_path, reference):
    r = _recipe(train_data, tmp_path, "run")
    rc, err = _interrupt(r, tmp_path / "run", signal.SIGTERM, after_step=6)
    assert rc == 1 and "error: SIGTERM at step" in err, err
    step = int(err.split("SIGTERM at step ")[1].split(":")[0])
    assert list_checkpoints(tmp_path / "run/ckpt")[-1].name == f"step_{step:06d}"  # saved on the signal
    p = run("train", "--recipe", r, "--resume")
    assert p.returncode == 0, p.stderr
    assert train_losses(tmp_path / "run") == reference
