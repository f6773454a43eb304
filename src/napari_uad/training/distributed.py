"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m napari_uad train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init_from_env` joins them into one process group
(NCCL on GPUs, gloo on CPU). Every rank trains on its own batches; gradients are averaged, so
the weights stay identical; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str = "auto") -> str:
    """Join the process group described by ``torchrun``'s environment, if any.

    Parameters
    ----------
    device : str
        Requested device; on CUDA each rank takes GPU ``LOCAL_RANK``.

    Returns
    -------
    str
        The device this rank should use.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is running, else itself."""
    if rank_and_size()[1] == 1:
        return module
    device_ids = [device.index or 0] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def shutdown() -> None:
    """Leave the process group (call once at the end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
