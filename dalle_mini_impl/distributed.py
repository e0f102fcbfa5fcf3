"""Several processes training one model: data parallelism with PyTorch's ``DistributedDataParallel``.

Scope. The course's training loops (``train_dvae``, ``train_transformer``,
``train_clip``) run in one process as they always did. Launched by torchrun::

    torchrun --nproc_per_node 2 -m dalle_mini_impl.cli train-transformer --threads 1

N processes ("ranks") start, each with a full copy of the model, and one
training step of a global batch of B examples goes:

1. every rank draws the *same* random batch of B examples: all ranks are
   seeded alike, so their random generators agree;
2. rank r keeps its shard, examples r·b … r·b + b - 1 with b = B / N
   (``shard``);
3. forward and backward on the shard; DDP averages the gradients over the
   ranks during backward. For a loss that is a mean over examples, the mean of
   N shard means is the mean over the B examples: the gradient of one process
   with batch B;
4. every rank takes the same optimizer step, so the copies stay identical
   (lock-step) without ever sending weights.

Only rank 0 writes checkpoints and logs and shows progress bars
(``is_main``). NCCL connects GPUs (one per rank, ``cuda:<LOCAL_RANK>``),
gloo connects CPU processes. Outside torchrun (no ``WORLD_SIZE`` above 1 in
the environment) every function here is a no-op: rank 0 of 1, ``shard``
returns its input, ``wrap`` returns the model.

Two losses are not a mean over examples and get help here:
``gather_with_grad`` lets CLIP's contrastive loss see the whole global batch
(every caption is a negative for every image), and ``all_sum`` /
``all_gather`` let the dVAE's dead-code restarts see every rank's codes.

Does not handle: model parallelism, uneven last batches (B must be a multiple
of N), synchronised batch statistics (the dVAE's logits head centres each rank's
shard on its own, as a plain DDP BatchNorm does), or restoring each GPU's own random
generator on resume (ranks restore rank 0's; CPU runs resume exactly).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import get_device

# ---------------------------------------------------------------------------
# who am I: rank, world size, device
# ---------------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def enabled() -> bool:
    """True once this process has joined a group of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's number, 0 … world_size - 1 (0 outside torchrun)."""
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs and progress bars."""
    return rank() == 0


def local_rank() -> int:
    """This process's number on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str | None = None) -> str:
    """Join torchrun's process group (once per process) and return the device to train on.

    Outside torchrun: ``device`` or ``get_device()``, nothing else happens.
    Under torchrun: NCCL and ``cuda:<LOCAL_RANK>`` when a GPU is available (and
    ``device`` does not say ``"cpu"``), else gloo and ``"cpu"``. The rendezvous
    address comes from torchrun's environment variables (``MASTER_ADDR``,
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``).
    """
    if not launched_by_torchrun():
        return device or get_device()
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(cleanup)
    return f"cuda:{local_rank()}" if use_cuda else "cpu"


def cleanup() -> None:
    """Leave the process group (safe to call twice, or outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# batches: the same global batch everywhere, one shard per rank
# ---------------------------------------------------------------------------


def per_rank_batch(global_batch: int) -> int:
    """b = B / N, the examples each rank processes per step; ``ValueError`` when N does not divide B.

    Example: B = 64 on 2 ranks -> 32; on 1 process -> 64; B = 10 on 4 ranks -> ValueError.
    """
    n = world_size()
    if global_batch % n:
        raise ValueError(f"the batch size {global_batch} does not split evenly over {n} processes; "
                         f"use a multiple of {n}")
    return global_batch // n


def shard(batch: Any) -> Any:
    """This rank's part of a global batch (a tensor, array or list of B items): items r·b … r·b + b - 1.

    In one process: ``batch`` itself, untouched. Example: 8 items on rank 1 of 2 -> items 4 … 7.
    """
    if not enabled():
        return batch
    b = per_rank_batch(len(batch))
    return batch[rank() * b:(rank() + 1) * b]


# ---------------------------------------------------------------------------
# the model: DDP averages gradients during backward
# ---------------------------------------------------------------------------


class _Method(nn.Module):
    """A module whose ``forward`` is ``model.<name>``: DDP syncs the gradients of what ``forward`` computes."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.name)(*args, **kwargs)


def wrap(model: nn.Module, method: str | None = None):
    """What a training step calls: ``model`` (or ``model.<method>``), inside DDP when several ranks train.

    In one process: ``model`` itself (or the bound method), so nothing changes.
    Under torchrun: ``DistributedDataParallel`` around it, which also checks
    at construction that every rank starts from the same weights (it copies
    rank 0's). Keep the plain ``model`` for saving and sampling: the wrapper
    shares its parameters.
    """
    if not enabled():
        return getattr(model, method) if method else model
    target = _Method(model, method) if method else model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(target, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------------------
# collectives (each one a no-op in one process)
# ---------------------------------------------------------------------------


def _comm_device(t: torch.Tensor) -> torch.device:
    """NCCL only moves GPU tensors; gloo moves CPU ones (and GPU ones through the CPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if enabled():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others: rank 0 fills a cache, the others read it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

    DDP does this before every forward, but each forward then updates them from
    its own shard: after the last step, call this so every rank holds the model
    rank 0 saved.
    """
    if enabled():
        for buffer in model.buffers():
            on_comm = buffer.data.to(_comm_device(buffer))
            dist.broadcast(on_comm, src=0)
            buffer.data.copy_(on_comm)


def all_finite(loss: torch.Tensor) -> bool:
    """True when ``loss`` is finite on every rank: all ranks stop together, or none does."""
    finite = bool(torch.isfinite(loss).all())
    if not enabled():
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=_comm_device(loss))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks, as a new tensor on ``t``'s device (``t`` itself in one process)."""
    if not enabled():
        return t
    total = t.detach().to(_comm_device(t)).clone()
    dist.all_reduce(total)
    return total.to(t.device)


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` stacked along dim 0, rank 0 first: (b, ...) -> (N·b, ...). No gradient."""
    if not enabled():
        return t
    local = t.detach().to(_comm_device(t)).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: sum the gradients every rank computed for my rows, keep my rows.

    Written out rather than ``torch.distributed.nn.functional.all_gather``: that
    function is deprecated in the PyTorch this course pins (it points to
    ``_functional_collectives``, a private module), and it returns a tuple of
    parts where the loss wants one tensor. Ten lines say exactly what the
    backward does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (N·b, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each rank's loss used my rows: Σ over ranks of ∂L_rank/∂(my rows)
        b = grad.shape[0] // world_size()
        return grad[rank() * b:(rank() + 1) * b]  # (b, ...)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t``, (b, E) -> (N·b, E), with gradients flowing back to each rank's own rows.

    For a loss over the whole global batch, such as CLIP's: every rank
    computes the same loss L from the same gathered rows; the backward sums
    the N identical gradients of my rows (N · ∂L/∂mine), and DDP's average over
    the ranks divides by N again: exactly ∂L/∂θ of one process with batch B.
    """
    return _GatherWithGrad.apply(t) if enabled() else t
