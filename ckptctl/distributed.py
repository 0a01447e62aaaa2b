"""torch.distributed awareness: who am I, and helpers that make every rank take the same decision.

Inside an initialised process group (``torchrun``), single-file checkpoints are written by rank 0
only, but every rank must *agree* on what happened: whether a best checkpoint was saved, which
file ``load("latest")`` resolved to, whether to stop for an emergency save. Each helper here is
one small collective that settles such a decision, and a no-op returning the local value when
there is no process group (a plain single-process run pays nothing and needs no torch.distributed).

Every helper is a *collective*: inside a process group, every rank must call it, in the same
order, or the job hangs. The manager and :class:`~ckptctl.signals.EmergencyStop` call them only
from methods every rank calls (see the README, "Multi-process training").

torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

T = TypeVar("T")


def _dist() -> Any | None:
    """torch.distributed if a process group is initialised with more than one rank, else None.

    A world of one behaves like no process group at all: nothing to agree on, nothing to wait for.
    Only looks at torch if the program already imported it (a run without a process group never
    pays for ``import torch.distributed``).
    """
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def is_active() -> bool:
    """True inside an initialised process group of two or more ranks."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank; 0 when there is no process group."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    """How many ranks take part; 1 when there is no process group."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def is_main_process() -> bool:
    """Rank 0 of an initialised process group, or the only process: the one that writes single files."""
    return rank() == 0


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (whatever the others passed); ``value`` itself when not distributed.

    For small picklable decisions (a bool, a float, a path string): one ``broadcast_object_list``.
    """
    if not is_active():
        return value
    dist = _dist()
    box = [value if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_device(dist))
    return box[0]


def max_over_ranks(value: int) -> int:
    """The largest ``value`` any rank passed (``all_reduce(MAX)`` of one int64); ``value`` when not distributed.

    One 8-byte collective: cheap enough to run at every step boundary.
    """
    if not is_active():
        return value
    import torch

    dist = _dist()
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=_device(dist))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on at least one."""
    return bool(max_over_ranks(1 if flag else 0))


def background_group() -> Any | None:
    """A new gloo process group over every rank, for collectives run off the main thread; None without one.

    A background save's collectives (DCP's plan exchange and final gather) must never interleave with
    the training's on the default group: on a group of their own they cannot. gloo, because it runs
    on the CPU where the staged copy lives (and DCP's ``async_save`` requires a CPU backend). Unlike
    the other helpers this also applies to a world of one (DCP uses any initialised group).
    Collective: every rank creates it, at the same point.
    """
    dist = _dist()
    return dist.new_group(backend="gloo") if dist is not None else None


def barrier() -> None:
    """Wait until every rank got here; nothing when not distributed."""
    if is_active():
        dist = _dist()
        if dist.get_backend() == "nccl":  # NCCL's barrier needs to know the device; gloo/mpi do not
            dist.barrier(device_ids=[_device(dist).index])
        else:
            dist.barrier()


def _device(dist: Any) -> Any:
    """Where collective tensors must live: the current CUDA device for NCCL, the CPU otherwise."""
    import torch

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
