"""Multi-process helpers (torch.distributed; started by torchrun or ``accelerate launch``).

Design: every process samples whole groups (a group never spans processes), the per-epoch
statistics are computed on the all-gathered batch, gradients are summed across processes with the
loss normalised by the global sample count, and only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def local_device(device: str) -> str:
    """This process's device: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` when launched with
    WORLD_SIZE > 1 (torchrun and ``accelerate launch`` set both), so that each process gets its own GPU;
    anything else (``cpu``, an explicit ``cuda:1``) is returned unchanged."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_from_env(device: str) -> str:
    """Initialise the default process group when launched with WORLD_SIZE > 1 (NCCL on CUDA, gloo
    otherwise) and return this process's device (``local_device``), made current on CUDA."""
    device = local_device(device)
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # rewards and helpers that say plain "cuda" follow
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all processes along dim 0, in rank order."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(value: int | float) -> int | float:
    """The maximum of a Python number over processes (an int stays an int)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long if isinstance(value, int) else torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return type(value)(t.item())


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values into every process's tensors, in place (as DDP does with the
    initial weights: a random LoRA init must be the same on every process)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)


def sum_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over processes (the loss is already divided by the global sample count)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
