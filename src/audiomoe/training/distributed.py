"""Process-group set-up for ``torchrun``: DDP (gloo on CPU, nccl on GPU) or FSDP, behind one small interface.

Single-process runs use the same code path with ``world_size == 1`` and no process group.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits. Read from the variables ``torchrun`` sets."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistEnv:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def default_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group ``torchrun`` prepared (no-op for one process)."""
    if not env.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def mean_across_ranks(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Average a float tensor over ranks (identity for one process)."""
    if not env.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / env.world_size


def sum_across_ranks(value: float, env: DistEnv) -> float:
    if not env.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def wrap_model(
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
    strategy: str,
    fsdp_wrap: list[str],
    find_unused_parameters: bool = True,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """DDP or FSDP2 around ``model`` when running on several processes; the model itself otherwise.
    ``param_dtype`` (FSDP only): the :class:`MixedPrecisionPolicy` compute dtype, gradients reduced in fp32."""
    if not env.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None
        )
        # Shard the named blocks (e.g. the LLM's decoder layers) on their own, then the rest at the root.
        for module in model.modules():
            if type(module).__name__ in fsdp_wrap:
                fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def shutdown(env: DistEnv) -> None:
    """Leave the process group cleanly. Why the barrier and gc: gloo sometimes aborts at interpreter exit
    ("terminate called without an active exception") when DDP buffers are still alive; freeing them first and
    synchronising before ``destroy_process_group`` makes the exit code reliable."""
    gc.collect()
    if env.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
