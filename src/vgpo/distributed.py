"""Multi-process helpers (torch.distributed; started by torchrun or ``accelerate launch``).

Design: every process samples whole groups (a group never spans processes), the per-epoch
statistics are computed on the all-gathered batch, gradients are summed across processes with the
loss normalised by the global sample count, and only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


def local_device(device: str) -> str:
    """This process's device: a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` when launched with
    WORLD_SIZE > 1 (torchrun and ``accelerate launch`` set both), so that each process gets its own GPU;
    anything else (``cpu``, an explicit ``cuda:1``) is returned unchanged."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def init_from_env(device: str) -> str:
    """Initialise the default process group when launched with WORLD_SIZE > 1 (NCCL and gloo on CUDA,
    gloo otherwise) and return this process's device (``local_device``), made current on CUDA."""
    device = local_device(device)
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # rewards and helpers that say plain "cuda" follow
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # On CUDA: NCCL for GPU tensors, gloo for the CPU tensors the trainer reduces (rewards,
        # advantages, counters), which NCCL cannot take.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo")
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


def is_sharded(t: torch.Tensor) -> bool:
    return isinstance(t, DTensor)


def shard_model(root: torch.nn.Module, blocks: list[torch.nn.Module], whole: list[torch.nn.Module]) -> None:
    """FSDP2: shard every block, then the root, over all processes (weights, gradients and, through
    the optimizer built on the sharded parameters, its state); the ``whole`` submodules' parameters
    are left out (they must be frozen: nothing synchronises them). Gradients are reduce-scattered as
    sums, not FSDP's default mean, because the trainer's loss is already divided by the global
    sample count (as ``sum_gradients_`` assumes)."""
    from torch.distributed.fsdp import fully_shard

    ignored = {p for m in whole for p in m.parameters()}
    if any(p.requires_grad for p in ignored):
        raise ValueError("shard_model: the unsharded submodules must be frozen")
    for module in [*blocks, root]:
        fully_shard(module, ignored_params=ignored)
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM


def local_numel(t: torch.Tensor) -> int:
    """Elements this process holds (its shard of a sharded tensor)."""
    return t.to_local().numel() if isinstance(t, DTensor) else t.numel()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process must call it), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every process) sharded as ``like``; unchanged when ``like`` is not sharded."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def sum_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over processes (the loss is already divided by the global sample count).
    Sharded parameters are skipped: FSDP reduce-scattered their gradients in the backward."""
    if world_size() == 1:
        return
    for p in params:
        if is_sharded(p):
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
