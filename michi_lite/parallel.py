"""Data-parallel training across processes: what ``fit`` needs to train one model in many.

``accelerate launch --multi_gpu --num_processes N`` (its torchrun launcher,
on CPUs too; or ``torchrun --nproc-per-node N``) starts N copies of a
training command and tells each its rank through the environment;
``start`` joins them into one process group (gloo on CPUs, NCCL on GPUs). Each step then works like this:

1. Every process draws the same global batch (``EpochBatches`` orders
   batches by seed and pass alone) and keeps its own share of the items,
   every N-th from its rank (``shard``).
2. Each computes its share's losses. A loss that is a mean over frames or
   tokens is weighted by how many of the batch's frames or tokens its share
   holds (``Shares``), so the weighted losses average, over the processes,
   to the global batch's mean: the loss one process would compute on the
   whole batch.
3. After ``backward`` the gradients are averaged over the processes
   (``average_gradients``), as DistributedDataParallel does (without its
   overlap of communication and backward), so every copy takes the same
   optimizer step and the weights stay identical.

Only rank 0 writes the log, the checkpoints and the exported weights; every
process reads a checkpoint on resume. With one process every function here
is a no-op.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def start(device: torch.device) -> torch.device:
    """Join the process group a launcher describes in the environment (``WORLD_SIZE`` > 1); the device to use.

    On GPUs each process takes the GPU of its local rank. Without a
    launcher (or with one process) nothing is started and ``device`` is
    returned as it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    logger.info("process %d of %d, on %s", rank(), world_size(), device)
    return device


def stop() -> None:
    """Leave the process group, if one was started."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (from the launcher's environment once the group is gone)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0; the only process without a group)."""
    return rank() == 0


def _device() -> torch.device:
    """Where small tensors go to be summed across processes: NCCL sums on GPUs, gloo on CPUs."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(batch: list) -> list:
    """This process's items of a global batch: every ``world_size``-th, from its rank.

    A batch with fewer items than processes (the short last batch of a
    length bucket) is repeated until each process has one: its items then
    count twice, which keeps one batch a step on every process.
    """
    n = world_size()
    if n == 1:
        return batch
    if len(batch) < n:
        batch = (batch * n)[:n]
    return batch[rank()::n]


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every process's copy of ``module`` rank 0's (they are the same if seeded alike; now for certain)."""
    if world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over the processes (those without one count as zero)."""
    n = world_size()
    if n == 1:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(n)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (so that all stop together, e.g. when time is up)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(value: object) -> list:
    """Every process's ``value``, in rank order (on every process)."""
    if world_size() == 1:
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


class Shares:
    """How much of a global batch's mean each of this process's losses stands for.

    ``counts`` names, per loss, how many frames or tokens this process's
    share of the batch averages it over. ``weight(name)`` is that count
    times the number of processes over the global count: a loss multiplied
    by it and averaged over the processes is the global batch's mean (1
    with one process). ``mean`` gives a logged value the same way.
    """

    def __init__(self, counts: dict[str, torch.Tensor | int]) -> None:
        self.names = list(counts)
        local = torch.tensor([float(counts[name]) for name in self.names], dtype=torch.float64)
        total = local.clone()
        if world_size() > 1:
            total = total.to(_device())
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total = total.cpu()
        self.weights = {name: float(w) for name, w in zip(self.names, world_size() * local / total.clamp(min=1))}
        self.totals = {name: float(t) for name, t in zip(self.names, total)}

    def weight(self, name: str) -> float:
        return self.weights[name]

    def total(self, name: str) -> float:
        """How many frames or tokens the global batch averages ``name`` over."""
        return self.totals[name]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Per-process means of ``counts``'s names -> the global batch's means (other names: averaged as they are)."""
        if world_size() == 1:
            return dict(values)
        names = list(values)
        local = torch.tensor([values[k] * self.weights.get(k, 1.0) for k in names], dtype=torch.float64,
                             device=_device())
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
        return {k: float(v) / world_size() for k, v in zip(names, local)}
