"""torch.distributed awareness: who am I, and helpers that make every rank take the same decision.

Inside an initialised process group (``torchrun``), single-file checkpoints are written by rank 0
only, but every rank must *agree* on what happened: whether a best checkpoint was saved, which
file ``load("latest")`` resolved to, whether to stop for an emergency save. Each helper here is
one small collective that settles such a decision, and a no-op returning the local value when
there is no process group (a plain single-process run pays nothing and needs no torch.distributed).

Every helper is a *collective*: inside a process group, every rank must call it, in the same
order, or the job hangs. The manager and :class:`~ckptctl.training.signals.EmergencyStop` call them only
from methods every rank calls (see the README, "Multi-process training").

Calls skipped on some ranks (``if rank == 0: mgr.save_best(...)``) are turned into an error instead of a
hang by :func:`agree`: ckptctl's own agreements (``EmergencyStop.check``, the entry of ``save_best`` and
``save_emergency``) are each one ``all_reduce`` on a gloo *control group* that carries the call's code and
has a timeout. Two ranks in different ckptctl calls meet there and both raise
:class:`~ckptctl.errors.CollectiveError` naming the calls; a rank that meets nobody raises after the timeout.
The control group runs on the CPU, so with NCCL training an agreement never synchronises the GPU stream:
with a gloo default group it *is* the default group (one group less to tear down); otherwise (NCCL) a
gloo group made for it. torch tears groups down unsafely right after a collective: a
``destroy_process_group()`` that follows one directly aborts a rank now and then ("terminate called
without an active exception", torch 2.13 with gloo, about 1 run in 4 in a 2-rank loop; never after a
``barrier()``), so end a run with ``dist.barrier()`` before ``destroy_process_group()``.

torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import CollectiveError

T = TypeVar("T")

DEFAULT_TIMEOUT = 600.0
"""Seconds a rank waits at an agreement for the others (NCCL's default collective timeout, 10 minutes):
generous, because a rank may legitimately arrive late (rank 0 alone running a long evaluation)."""

# The calls that meet in agree(), by code: a mismatch is detected (max != min of the codes) and named.
CALLS = ("EmergencyStop.check", "save_best", "save_emergency")

_control: tuple[Any, Any] | None = None  # (the default group it belongs to, the gloo control group)


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

    One 8-byte collective on the default group (with NCCL also a host-device sync): for rare decisions;
    the per-step stop check uses :func:`start_agreement` instead.
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


def control_group() -> Any | None:
    """The gloo group of :func:`agree` (see the module doc); None without an active process group.

    The default group if its backend is gloo. Otherwise a new gloo group, made at the first call:
    collective then (every rank creates it, at the same point): the manager's constructor and the
    first agreement of ``EmergencyStop.check`` are such points. A new default group (after
    ``destroy_process_group`` and a new ``init_process_group``) gets a new control group.
    """
    global _control
    if not is_active():
        return None
    dist = _dist()
    world = dist.group.WORLD
    if _control is None or _control[0] is not world:
        _control = (world, world if dist.get_backend() == "gloo" else dist.new_group(backend="gloo"))
    return _control[1]


def agree(call: str, value: int = 0, *, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Meet every other rank at ``call`` and return the largest ``value`` any rank passed.

    One ``all_reduce(MAX)`` of ``[code, -code, value]`` on the control group, waiting at most
    ``timeout`` seconds: if the ranks are in different calls (max code != min code), or the others do
    not come in time, every rank that got here raises :class:`CollectiveError` saying which call must
    be made on every rank. Without a process group (or in a world of one): ``value``, no wait.
    """
    return start_agreement(call, value, timeout=timeout).result()


class Agreement:
    """An :func:`agree` in flight: started now, its :meth:`result` collected later (non-blocking use)."""

    def __init__(self, call: str, value: int, timeout: float):
        self.call, self.value, self.timeout = call, int(value), timeout
        self._work: Any = None
        self._tensor: Any = None
        self._error: BaseException | None = None
        if not is_active():
            return
        import torch

        dist = _dist()
        code = CALLS.index(call) + 1
        self._tensor = torch.tensor([code, -code, self.value], dtype=torch.int64)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MAX
        options.timeout = timedelta(seconds=timeout)
        try:
            self._work = control_group().allreduce([self._tensor], options)
        except RuntimeError as exc:  # the group is already broken (a peer gone, an earlier timeout)
            self._error = exc

    def result(self) -> int:
        """Wait for the agreement (bounded by its timeout); the largest value, or CollectiveError."""
        if self._tensor is None:
            return self.value
        try:
            if self._error is not None:
                raise self._error
            self._work.wait()
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            raise CollectiveError(
                f"rank {rank()}: the other ranks did not join {self.call}() (waited up to {self.timeout:g} s; "
                f"{detail}): {self.call} must be called on every rank, in the same order"
            ) from exc
        high, low, agreed = (int(x) for x in self._tensor.tolist())
        code = CALLS.index(self.call) + 1
        if high != -low:
            other = CALLS[high - 1] if high != code else CALLS[-low - 1]
            skipped = [name for name in (self.call, other) if name != CALLS[0]] or [self.call]
            raise CollectiveError(
                f"rank {rank()} is in {self.call}() while another rank is in {other}(): "
                f"{' and '.join(skipped)} must be called on every rank, in the same order"
            )
        return agreed


def start_agreement(call: str, value: int = 0, *, timeout: float = DEFAULT_TIMEOUT) -> Agreement:
    """Start :func:`agree` without waiting: the all_reduce runs on gloo's thread until ``result()``."""
    return Agreement(call, value, timeout)


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
