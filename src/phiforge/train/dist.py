"""Distributed plumbing: one process = world of 1; under torchrun, DDP or FSDP2 over gloo (CPU) / nccl (GPU).

The loop never branches on the mode except through these helpers, so `python -m phiforge ...` and
`torchrun --nproc_per_node N -m phiforge ...` run the same code.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def teardown(d: Dist) -> None:
    if d.on and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, fsdp: bool) -> torch.nn.Module:
    """DDP, or FSDP2 (each block sharded, then the root) when `fsdp`; the bare model for one process."""
    if not d.on:
        return model
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(d.device.type, (d.world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def sync_context(net: torch.nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if last:
        return nullcontext()
    if hasattr(net, "no_sync"):  # DDP
        return net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        net.set_requires_gradient_sync(False)

        class _Restore:
            def __enter__(self):
                return None

            def __exit__(self, *a):
                net.set_requires_gradient_sync(True)

        return _Restore()
    return nullcontext()


def all_sum(x: float | torch.Tensor, d: Dist) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    if d.on:
        t = t.to(d.device) if d.device.type == "cuda" else t
        dist.all_reduce(t)
    return t.cpu()


def all_max(x: int, d: Dist) -> int:
    return int(_reduce(x, d, dist.ReduceOp.MAX)) if d.on else int(x)


def _reduce(x, d: Dist, op) -> torch.Tensor:
    t = torch.tensor(float(x), dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=op)
    return t.cpu()


def barrier(d: Dist) -> None:
    if d.on:
        dist.barrier()


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None, fsdp: bool, d: Dist):
    """(model state dict, optimizer state dict), full and on CPU on rank 0 (collective under FSDP)."""
    if not (fsdp and d.on):
        return model.state_dict(), (opt.state_dict() if opt is not None else None)
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=o)
    osd = get_optimizer_state_dict(model, opt, options=o) if opt is not None else None
    return msd, osd


def load_optimizer(model, opt, osd: dict, fsdp: bool, d: Dist) -> None:
    if not (fsdp and d.on):
        opt.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))
