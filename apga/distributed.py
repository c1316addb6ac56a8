"""Data-parallel training with DistributedDataParallel, when launched by torchrun.

    torchrun --nproc-per-node 2 apga_mura.py --body-part elbow ...

Every rank trains on its shard of each batch order; gradients are averaged by DDP, APGA's reward
and the logged metrics are averaged across ranks, so all ranks take the same decisions. Rank 0
alone evaluates, writes files and shows progress; what it decides is broadcast to the others.
Without torchrun (WORLD_SIZE unset or 1) every helper here is a no-op.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from apga.utils import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average of `tensor` over ranks (the same tensor on one process)."""
        if not self.enabled:
            return tensor
        reduced = tensor.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.world_size

    def from_main(self, obj):
        """Rank 0's `obj`, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(gpu_id: int, timeout_min: float = 180) -> tuple[Dist, torch.device]:
    """Join the process group when torchrun started us; else a single process on `gpu_id`.
    `timeout_min`: how long a collective waits for every rank (rank 0 evaluates alone while the
    others wait, longer than gloo's and NCCL's defaults on a large split)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), resolve_device(gpu_id)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return Dist(dist.get_rank(), dist.get_world_size()), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module | None, d: Dist, device: torch.device):
    if model is None or not d.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def plain_networks(method):
    """The method's networks without their DDP wrappers, for work that rank 0 does alone."""
    wrapped = method.classifier, method.agent
    method.classifier, method.agent = unwrap(method.classifier), unwrap(method.agent)
    try:
        yield method
    finally:
        method.classifier, method.agent = wrapped
