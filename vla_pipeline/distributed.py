"""Data-parallel updates under `torchrun`: one process per rank, each on its block of the batch.

Every rank draws the same global batch (same seeds), keeps its contiguous block of rows, and
after `backward` the ranks' gradients are averaged with one all-reduce (gloo on the CPU, NCCL
on CUDA) before the identical optimizer step. This is what `DistributedDataParallel` computes;
it is written out because a PPO minibatch runs two forwards (PPO and self-BC batches) before
its one backward and each loss leaves some parameters without a gradient, which DDP's reducer
handles only with `find_unused_parameters` and never across two forwards. Rank 0 alone
collects rollouts, validates and writes outputs; a run on 1 rank is the plain code path.

BatchNorm in training mode normalises with the whole batch's statistics across ranks
(`synced_batch_norm`): torch's SyncBatchNorm runs only on accelerators, and per-rank statistics
would make 2 ranks train a different model than 1.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes in the environment (no-op on 1 rank)."""
    if not launched() or dist.is_initialized():
        return
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def progress_options() -> dict:
    """tqdm keyword arguments: bars on rank 0 only. Nothing is passed on rank 0, so tqdm keeps
    its own defaults there (always drawn; TQDM_DISABLE still applies)."""
    return {} if is_main() else {"disable": True}


def threads_per_rank(num_threads: int, ranks_on_node: int | None = None) -> int:
    """A params thread count is the node's budget: torchrun's ranks on one node share it."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ranks_on_node is None else ranks_on_node
    return max(1, num_threads // ranks)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def block(n: int, part: int | None = None, parts: int | None = None) -> slice:
    """This rank's contiguous rows of a global batch of n: 64 on 2 ranks -> [0:32], [32:64]."""
    part, parts = rank() if part is None else part, world_size() if parts is None else parts
    return slice(part * n // parts, (part + 1) * n // parts)


def average_gradients(parameters) -> None:
    """Mean of every rank's gradient, in one flat all-reduce (a missing gradient counts as 0)."""
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def mean_value(value: float) -> float:
    """The mean over ranks of a scalar (a loss to log, a KL to stop on): every rank decides alike."""
    return sum_value(value) / world_size()


def sum_value(value: float) -> float:
    """The sum over ranks of a scalar (the real chunk steps of a batch split across ranks)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def broadcast(obj):
    """Rank 0's object on every rank (rollouts, a stop decision)."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights and buffers everywhere: the ranks start from one model."""
    if world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


class _SyncedBatchNormFunction(torch.autograd.Function):
    """Batch normalisation of (N, C, ...) with the statistics of every rank's rows together."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        dims = [0] + list(range(2, x.dim()))
        channels = x.shape[1]
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() / channels])])
        dist.all_reduce(local)
        count = local[-1]
        mean = local[:channels] / count
        var = (local[channels:2 * channels] / count - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, channels] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.count = count
        out = xhat * weight.view(shape) + bias.view(shape)
        return out, mean, var * count / (count - 1).clamp_min(1.0)

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        xhat, weight, invstd = ctx.saved_tensors
        dims = [0] + list(range(2, xhat.dim()))
        channels = xhat.shape[1]
        shape = [1, channels] + [1] * (xhat.dim() - 2)
        sum_dy, sum_dy_xhat = grad_out.sum(dims), (grad_out * xhat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        mean_dy, mean_dy_xhat = both[:channels] / ctx.count, both[channels:] / ctx.count
        grad_x = (weight * invstd).view(shape) * (grad_out - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape))
        return grad_x, sum_dy_xhat, sum_dy, None  # parameter gradients stay local (averaged later)


class _RankSyncedBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.track_running_stats or not self.affine:
            return super().forward(x)
        out, mean, unbiased_var = _SyncedBatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(unbiased_var, alpha=momentum)
        return out


@contextlib.contextmanager
def synced_batch_norm(module: torch.nn.Module) -> Iterator[None]:
    """While training on several ranks, BatchNorm2d layers use the statistics of all ranks' rows
    (same parameters and buffers, so checkpoints are unchanged); a no-op on 1 rank."""
    layers = [m for m in module.modules() if type(m) is torch.nn.BatchNorm2d] if world_size() > 1 else []
    for layer in layers:
        layer.__class__ = _RankSyncedBatchNorm2d
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = torch.nn.BatchNorm2d
