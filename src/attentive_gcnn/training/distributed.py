"""Data parallelism: one run trained by several processes (torchrun, or the tasks of a Slurm/submitit job).

The processes (ranks) split every batch of the one-process run: rank ``r`` of ``W`` takes rows
``[r * n // W, (r + 1) * n // W)`` of each global batch of ``n`` samples (:class:`~attentive_gcnn.data.SeededBatch`
carries the slice's place, so augmentation draws what the one-process run draws for those rows). Each rank's
objective is its samples' summed loss divided by the global batch size, times ``W``; DDP's gradient average then
gives exactly the gradient of the one-process run's mean loss. Batch norms use the statistics of the global
batch (:func:`sync_batch_norms`), training and evaluation metrics are summed over the ranks, and only rank 0
writes the run directory. With one process nothing here is active and a run is the one-process run.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from attentive_gcnn.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local`` on its machine."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory and logs."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def detect_ranks(env: dict | None = None) -> Ranks:
    """This process's ranks, from its environment:

    - torchrun: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``;
    - a submitit job (``hydra/launcher=slurm`` or ``local``) with several tasks: the task's place, and the
      rendezvous variables (``MASTER_ADDR``, ``MASTER_PORT``) exported from the job's environment;
    - ``srun`` with several tasks in your own batch script: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
      ``SLURM_LOCALID``, with ``MASTER_ADDR`` and ``MASTER_PORT`` exported by the script;
    - otherwise one process. ConfigError where the variables are incomplete.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env:
        try:
            return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        except (KeyError, ValueError):
            raise ConfigError("WORLD_SIZE is set but RANK is missing or not an integer (start with torchrun)") from None
    if env.get("SUBMITIT_EXECUTOR") and env is os.environ:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        if submitit.JobEnvironment().num_tasks > 1:
            found = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if env["SUBMITIT_EXECUTOR"] == "local":  # one machine: the loopback, whatever the host name resolves to
                os.environ["MASTER_ADDR"] = "127.0.0.1"
            return Ranks(found.rank, found.world_size, found.local_rank)
        return SINGLE
    if int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
            raise ConfigError(
                "srun started several tasks but MASTER_ADDR/MASTER_PORT are not set; in the batch script: export "
                "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) MASTER_PORT=29500"
            )
        return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return SINGLE


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this rank's device (CUDA: the
    ``local``-th visible GPU, so one process per GPU)."""
    if not ranks.parallel:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world)
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (in place; unchanged with one process)."""
    if active():
        dist.all_reduce(values)
    return values


def max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def share(obj, ranks: Ranks):
    """Rank 0's ``obj`` on every rank (``obj`` of the other ranks is ignored)."""
    if not ranks.parallel:
        return obj
    box = [obj if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------- batch norms
class _SumOverRanks(torch.autograd.Function):
    """``x`` summed over the ranks; its gradient is the gradient summed over the ranks (each rank's objective
    depends on every rank's ``x`` through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchStatistics:
    """Mixin for a BatchNorm class: in training, mean and (biased) variance over the batch of all ranks, two
    passes each summed over the ranks with a differentiable all-reduce, so the gradient flows through the global
    statistics as in one process. Evaluation, and training in one process, are the class's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([x.numel() // max(x.shape[1], 1)], dtype=torch.float32, device=x.device)
        dist.all_reduce(count)
        n = count[0]
        mean = _SumOverRanks.apply(xf.sum(dims)) / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = xf - mean.reshape(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp(min=1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


_SYNCED: dict[type, type] = {}


def sync_batch_norms(model: nn.Module) -> nn.Module:
    """Make every batch norm of ``model`` (``BatchNorm1d/2d/3d``, ``GroupBatchNorm``) use the global batch's
    statistics in training when several processes train (in place; the parameters, buffers and state-dict keys
    are unchanged, so checkpoints load into the plain model). torch's own ``SyncBatchNorm`` runs on GPUs only."""
    for module in model.modules():
        cls = type(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, _GlobalBatchStatistics):
            if cls not in _SYNCED:
                _SYNCED[cls] = type(f"Synced{cls.__name__}", (_GlobalBatchStatistics, cls), {})
            module.__class__ = _SYNCED[cls]
    return model


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel where several processes train, else ``model``. The wrap
    broadcasts rank 0's parameters and buffers once; the batch norms keep equal statistics on every rank since
    they use the global batch, so buffers are not broadcast again."""
    if not active():
        return model
    sync_batch_norms(model)
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # newer torch names the option forward_sync_buffers (and deprecates broadcast_buffers)
    key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
    return ddp(model, device_ids=ids, **{key: False})
