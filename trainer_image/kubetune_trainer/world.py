"""The distributed world a training process joined: its size checked against what the launcher started,
decisions every rank must take together (stop now), and a digest of the replicas' trainable weights.

All of it is a no-op in a single process, so the same training code runs alone and in a world.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

from .errors import TrainerError

log = logging.getLogger("kubetune_trainer.world")

# Set by `kubetune-trainer launch` (and `kubetune train --local --processes N`) for its workers.
ENV_WORLD_SIZE = "KUBETUNE_WORLD_SIZE"


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def launched_world_size(env: dict[str, str] | os._Environ | None = None) -> int | None:
    """The world size the launcher started (KUBETUNE_WORLD_SIZE), else torchrun's WORLD_SIZE, else None."""
    env = os.environ if env is None else env
    for name in (ENV_WORLD_SIZE, "WORLD_SIZE"):
        raw = (env.get(name) or "").strip()
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise TrainerError(f"environment variable {name}={raw!r} is not an integer") from None
    return None


def check_world_size(actual: int, env: dict[str, str] | os._Environ | None = None) -> None:
    """Refuse to train in a world other than the launched one (e.g. accelerate falling back to a single
    process because its environment was read wrongly): each rank would train alone on all the data."""
    expected = launched_world_size(env)
    if expected is not None and expected != actual:
        raise TrainerError(
            f"launched for a world of {expected} processes but training runs in a world of {actual}: the "
            "distributed environment (RANK, WORLD_SIZE, MASTER_ADDR, LOCAL_RANK) was not picked up; "
            "start the training through `kubetune-trainer launch`"
        )


@dataclass(frozen=True)
class WorldFacts:
    """What the lineage records about the world a run trained in."""

    world_size: int
    strategy: str  # single | ddp | fsdp | deepspeed
    backend: str | None
    replica_digests: list[str] | None  # per rank, of the trainable weights (replicated strategies only)

    @property
    def replicas_in_sync(self) -> bool | None:
        if not self.replica_digests:
            return None
        return len(set(self.replica_digests)) == 1

    def to_dict(self) -> dict:
        return {
            "worldSize": self.world_size,
            "strategy": self.strategy,
            "backend": self.backend,
            "replicaDigests": self.replica_digests,
            "replicasInSync": self.replicas_in_sync,
        }


def trainable_digest(model) -> str:
    """sha256 over this process's trainable parameters (name, dtype, shape, bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not param.requires_grad:
            continue
        tensor = param.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def world_facts(trainer) -> WorldFacts:
    """Collective (every rank must call it): the world size, strategy and each replica's weight digest.

    Under DDP every rank holds the whole model and must end with the same weights; under FSDP or DeepSpeed
    the ranks hold shards, so no replica digest is taken."""
    size = int(trainer.args.world_size)
    if getattr(trainer, "is_fsdp_enabled", False):
        strategy = "fsdp"
    elif getattr(trainer, "is_deepspeed_enabled", False):
        strategy = "deepspeed"
    else:
        strategy = "ddp" if size > 1 else "single"
    if not _initialized():
        return WorldFacts(size, strategy, None, None)
    import torch.distributed as dist

    backend = str(dist.get_backend())
    digests = None
    if strategy == "ddp":
        gathered: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, trainable_digest(trainer.model))
        digests = [str(d) for d in gathered]
        if len(set(digests)) != 1:
            log.error("the replicas' trainable weights differ after training: %s", digests)
    return WorldFacts(size, strategy, backend, digests)


def agree(flag: bool, device=None) -> bool:
    """True on every rank when FLAG is true on any rank (a MAX all-reduce); FLAG itself when alone.

    Ranks that stop at different steps deadlock: one waits in the next step's all-reduce while the other
    saves. So a SIGTERM that reached some ranks first stops all of them at the same step."""
    if not _initialized():
        return flag
    import torch
    import torch.distributed as dist

    if device is None or dist.get_backend() == "gloo":
        device = "cpu"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (e.g. until all have written their part of a checkpoint)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()
