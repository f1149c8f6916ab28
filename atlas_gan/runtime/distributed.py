"""Process-group setup from torchrun's environment, and the few collectives the trainer needs.

Gradients are averaged by hand (one flattened all-reduce per model) instead of through DistributedDataParallel:
a GAN step runs the discriminator several times per backward (real, fake, the gradient penalty's double
backward), which DDP's hooks do not support, and the explicit version is as fast for one bucket per model.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def setup(timeout_s: float = 600.0) -> DistributedContext:
    """Join the process group torchrun describes (env://): NCCL on GPU, gloo on CPU; else run single-process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size == 1 and "MASTER_ADDR" not in os.environ:
        return DistributedContext(0, 0, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        # A restarted worker group (torchrun --max-restarts) may meet in the same store as the group it replaces;
        # a per-attempt prefix keeps it from reading the dead workers' addresses.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"atlas-gan/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), device, backend)


def teardown(ctx: DistributedContext, together: bool = True) -> None:
    """Leave the process group. `together` (after a run that finished on every rank): wait for all ranks first, so
    no rank closes its gloo pairs while a peer is still using them, which can abort that peer at exit
    ("terminate called without an active exception"). After a failure, leave at once: peers may never arrive."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    if together:
        dist.barrier()
    dist.destroy_process_group()


def exit_worker(ctx: DistributedContext, code: int, together: bool = True) -> NoReturn:
    """End a torchrun worker process: wait for every rank when the run finished on all of them, flush what it
    printed and logged, and leave through `os._exit`, without destroying the gloo process group or finalizing the
    interpreter. Either can still abort a rank whose peer has already left, after all its work is done ("terminate
    called without an active exception" from a gloo thread: one 2-rank test in four full runs of the suite beside
    another test process); the operating system closes the sockets just the same. Checkpoints, logs and MLflow
    are all written synchronously before this point."""
    if together and ctx.enabled and dist.is_initialized():
        dist.barrier()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def average_gradients(model: nn.Module, ctx: DistributedContext) -> None:
    """Mean of every parameter's gradient over ranks, in one flattened all-reduce."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(model: nn.Module, ctx: DistributedContext) -> None:
    """Rank 0's parameters and buffers everywhere (same start on every rank)."""
    if not ctx.enabled:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


def average_buffers(model: nn.Module, ctx: DistributedContext) -> None:
    """Batch-norm running statistics differ per rank; average them before they are saved or used."""
    if not ctx.enabled:
        return
    for buffer in model.buffers():
        if buffer.dtype.is_floating_point:
            dist.all_reduce(buffer.data)
            buffer.data /= ctx.world_size


def all_true(flag: bool, ctx: DistributedContext) -> bool:
    """True only if `flag` holds on every rank (so all ranks take the same branch)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def all_reduce_max(tensor: torch.Tensor, ctx: DistributedContext) -> None:
    """`tensor` becomes its maximum over ranks, in place, without a wait on the host."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def gather_objects(obj: object, ctx: DistributedContext) -> list[object]:
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()
