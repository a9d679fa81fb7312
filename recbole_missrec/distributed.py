"""Data-parallel training under ``torchrun --nproc_per_node N``: gloo on CPU, nccl on GPU.

Why the plugin has its own: RecBole 1.2.1's DDP path is NCCL-only (its Config initialises the process
group with ``nccl`` on ``cuda:<local_rank>`` from its own ``nproc``/``ip``/``port`` keys, so it does not run
on CPU) and shards data with a per-rank sampler; the MISSRec reference wrapped its model in DDP and then
trained the unwrapped ``.module``, so gradients were never all-reduced (spec §9 #7). Here:

- every rank iterates the same shuffled global batches (same loader seed) and keeps a contiguous share, so
  a run on N ranks sees the batches a single process would see;
- the loss goes through a real ``DistributedDataParallel`` wrapper, and each rank's loss is weighted by its
  share of the global batch, so the all-reduced gradient equals the single-process gradient of the mean
  loss over the global batch;
- in-batch negatives can be gathered from every rank with a gather whose backward returns each row's
  gradient to the rank that owns it;
- epoch-start hooks (MISSRec's interest discovery) run on rank 0 and the model's persistent buffers are
  broadcast; only rank 0 logs and writes files.

Outside torchrun (``WORLD_SIZE`` unset or 1) every function here is a no-op.
"""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_GATHER_GROUP = None  # own process group, so gathers never interleave with DDP's gradient all-reduce


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def init(config):
    """Join the process group torchrun describes (env ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and point
    ``config["device"]`` at this rank's device. Returns the world size."""
    global _GATHER_GROUP
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 1
    if not is_distributed():
        use_cuda = config["device"].type == "cuda"
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"rank {local_rank} has no GPU: {torch.cuda.device_count()} visible. RecBole's Config limits "
                    f"CUDA_VISIBLE_DEVICES to `gpu_id`, so list one GPU per process, e.g. --gpu_id=0,1"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        _GATHER_GROUP = dist.new_group()
        if use_cuda:
            config["device"] = torch.device("cuda", local_rank)
    return world_size()


def seed_rank(seed):
    """Give ranks other than 0 their own dropout stream (rank 0 keeps the single-process one)."""
    if rank() > 0:
        torch.manual_seed(seed + rank())


class _LossModule(nn.Module):
    """DDP all-reduces the gradients of what its forward returned, so the loss itself is the forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        return self.model.calculate_loss(interaction)


def loss_function(model):
    """``model.calculate_loss``, through a DistributedDataParallel wrapper when running distributed.

    Frozen parameters must already have ``requires_grad=False``. Buffers are not synchronised on every
    forward (the feature tables would be broadcast each step); persistent buffers are broadcast explicitly
    after each epoch-start hook (:func:`broadcast_buffers`).
    """
    if not is_distributed():
        return model.calculate_loss
    module = _LossModule(model)
    state = set(module.state_dict())
    local_only = [name for name, _ in module.named_buffers() if name not in state]  # non-persistent tables
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, local_only)
    device = next(model.parameters()).device
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


def shard(interaction):
    """This rank's contiguous share of a global batch and the weight of its loss, world * rows / global rows,
    so that the average over ranks DDP takes is the mean over the global batch.

    With fewer rows than ranks a rank without rows reuses the last row with weight 0, because every rank
    must take part in the backward pass.
    """
    n, world, me = len(interaction), world_size(), rank()
    if world == 1:
        return interaction, 1.0
    start, stop = n * me // world, n * (me + 1) // world
    if start == stop:
        return interaction[n - 1:n], 0.0
    return interaction[start:stop], world * (stop - start) / n


def _gather_padded(x, sizes):
    """All ranks' rows of x (row counts ``sizes``) concatenated in rank order."""
    padded = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=_GATHER_GROUP)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """Forward: every rank's rows. Backward: the gradient of this rank's rows summed over all ranks' losses
    (an all-reduce of the whole gradient, then this rank's slice; gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, sizes, start):
        ctx.start, ctx.stop = start, start + x.shape[0]
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=_GATHER_GROUP)
        return grad[ctx.start:ctx.stop], None, None


def gather_rows(x):
    """Rows of x from every rank, in rank order, and the index of this rank's first row among them.

    Gradients flow back to the rank that owns each row. Without distribution: (x, 0).
    """
    if not is_distributed():
        return x, 0
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count, group=_GATHER_GROUP)
    sizes = [int(c.item()) for c in counts]
    start = sum(sizes[: rank()])
    if x.dtype == torch.bool:
        return _gather_padded(x.to(torch.uint8), sizes).bool(), start
    if x.requires_grad:
        return _GatherRows.apply(x, sizes, start), start
    return _gather_padded(x, sizes), start


def broadcast_buffers(module):
    """Copy rank 0's persistent buffers (the model state a hook such as interest discovery may change) to
    every rank; non-persistent ones (feature tables) are the same everywhere and stay local."""
    if not is_distributed():
        return
    persistent = set(module.state_dict())
    for name, buffer in module.named_buffers():
        if name in persistent:
            carrier = buffer.to(torch.uint8) if buffer.dtype == torch.bool else buffer
            dist.broadcast(carrier, src=0)
            if carrier is not buffer:
                buffer.copy_(carrier.bool())


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] without distribution."""
    if not is_distributed():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier():
    if is_distributed():
        dist.barrier()


def shutdown():
    global _GATHER_GROUP
    if is_distributed():
        dist.destroy_process_group()
    _GATHER_GROUP = None
