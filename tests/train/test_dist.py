"""torchrun with 2 CPU processes (gloo): DDP matches one process with the same global batch, and an FSDP2
(fully_shard) run writes a checkpoint that one plain process loads and resumes exactly."""

import shutil

import pytest
import torch

from phiforge.model import load_model
from phiforge.train import from_dict, pretrain
from train_helpers import recipe, run, train_losses, write_recipe

pytestmark = pytest.mark.slow  # torchrun: two processes start, rendezvous and train (~1 min each)


@pytest.fixture(scope="module")
def single(train_data, tmp_path_factory):
    """One process, micro_batch 4: the global batch the 2-process runs split as 2 x 2."""
    tmp = tmp_path_factory.mktemp("single")
    pretrain(from_dict(recipe(train_data, tmp / "run", eval_every=0, save_every=0)))
    return tmp / "run"


def _two_procs(train_data, tmp_path, *extra, **kw):
    r = write_recipe(
        tmp_path / "r.yaml", recipe(train_data, tmp_path / "run", micro_batch=2, eval_every=0, **kw)
    )
    p = run("train", "--recipe", r, *extra, nproc=2, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp_path / "run"


def _close(a, b):
    assert [s for s, _ in a] == [s for s, _ in b]
    assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)


def test_ddp_two_processes_match_one(train_data, tmp_path, single):
    run_dir = _two_procs(train_data, tmp_path, save_every=0)
    _close(train_losses(run_dir), train_losses(single))
    m2, m1 = load_model(run_dir / "ckpt/step_000010"), load_model(single / "ckpt/step_000010")
    for (k, a), b in zip(m2.state_dict().items(), m1.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_fsdp2_checkpoint_loads_in_one_process(train_data, tmp_path, single):
    run_dir = _two_procs(train_data, tmp_path, fsdp=True, save_every=5)
    _close(train_losses(run_dir), train_losses(single))
    m = load_model(run_dir / "ckpt/step_000010")  # full, unsharded HF-layout weights
    ref = load_model(single / "ckpt/step_000010")
    for (k, a), b in zip(m.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    x = torch.randint(0, 512, (1, 16))
    torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-4)
    # resume under FSDP2 from step 5 (full optimizer state re-sharded on load): same losses exactly
    full = train_losses(run_dir)
    shutil.rmtree(run_dir / "ckpt/step_000010")
    _two_procs(train_data, tmp_path, "--resume", fsdp=True, save_every=5)
    assert train_losses(run_dir) == full
