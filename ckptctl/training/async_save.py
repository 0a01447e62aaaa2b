"""Background checkpoint writes: snapshot the state, return to training, write on one worker thread.

``CheckpointManager.save(state, step, blocking=False)`` costs the training loop only the time of
:func:`snapshot` (a memory copy of every tensor to the CPU); ``torch.save``, fsync, CRC check and
the renames of the usual durable protocol then run on a single worker thread.

Policy, and why:

- **At most one save in flight; a new one waits.** Skipping a save would silently lose a
  checkpoint the user asked for, and two concurrent writes would race on ``latest.pt`` and hold
  two snapshots in memory. If the loop saves faster than the disk writes, it is throttled to the
  disk's pace: the wait shows up as blocked time, not as missing files.
- **Every manager call first waits for the in-flight write** (saves, loads, ``close()``), so files
  appear in call order and a load sees every earlier save.
- **The snapshot's memory is reused by the next snapshot** (:meth:`AsyncWriter.snapshot`): copying
  into already-touched pages is several times faster than into fresh allocations (page faults
  dominate a large copy), and it is safe because a snapshot is only taken once the previous write
  finished. The price is one state's worth of CPU memory kept between saves; ``close()`` frees it.
- **Errors are raised, once, by the next call** that waits (the next save, a load, ``close()``),
  as the :class:`~ckptctl.errors.SaveError` the synchronous save would have raised. A failure
  still pending when the interpreter exits is logged at ERROR level by an ``atexit`` hook (an
  in-flight write itself is finished first: the worker thread is joined at interpreter exit).

Sharded saves (``format="dcp"``) use the same :class:`AsyncWriter` for their bookkeeping (one in
flight, errors raised once, the ``atexit`` report); their snapshot and write are DCP's ``async_save``
and the worker thread waits for it, then commits (:func:`ckptctl.formats.dcp.start_save_directory`).

torch is imported inside :func:`snapshot` only, so importing this module stays light.
"""

from __future__ import annotations

import atexit
import copy
import logging
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any, Callable

log = logging.getLogger("ckptctl.training.async_save")

_WRITERS: "weakref.WeakSet[AsyncWriter]" = weakref.WeakSet()


class AsyncWriter:
    """One worker thread, at most one write in flight; its error is raised by the next :meth:`wait`."""

    def __init__(self, name: str = "ckptctl-save"):
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None
        self._buffers: list[Any] = []  # the previous snapshot's CPU storages, reused by the next one

    @property
    def in_flight(self) -> bool:
        """True while a submitted write has not finished."""
        return self._pending is not None and not self._pending.done()

    def snapshot(self, obj: Any) -> Any:
        """:func:`snapshot`, copying into the previous snapshot's storages where sizes match.

        Waits for the in-flight write first: its snapshot is the memory about to be overwritten.
        """
        self.wait()
        return _Copier(self._buffers).copy(obj)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the worker thread, after the previous write finished (its error raised here)."""
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            _WRITERS.add(self)
        self._pending = self._executor.submit(fn, *args)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` for the in-flight write to end; True if none is left.

        Its error is kept for :meth:`wait` (a benchmark or test can let a write finish without consuming it)."""
        pending = self._pending
        if pending is None:
            return True
        return not futures_wait([pending], timeout=timeout).not_done

    def wait(self) -> None:
        """Block until the in-flight write finished; raise its exception if it failed (only once).

        Interrupted while waiting (KeyboardInterrupt), the write stays pending: its outcome is not lost.
        """
        pending = self._pending
        if pending is None:
            return
        try:
            pending.result()
        finally:
            if pending.done():
                self._pending = None

    def close(self) -> None:
        """Finish the in-flight write and stop the worker thread; raises the write's error."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._buffers.clear()


def snapshot(obj: Any) -> Any:
    """A copy of ``obj`` that shares no memory the training loop can still change.

    Tensors are copied to the CPU (``detach``, so no autograd history is kept); tensors that
    shared a storage share the copied one, so the file is as large as a ``torch.save`` of the
    original, not larger. dicts, lists and tuples are rebuilt; any other value is deep-copied
    (``copy.deepcopy`` returns immutable values such as numbers and strings as they are).
    """
    return _Copier([]).copy(obj)


class _Copier:
    """One snapshot walk. ``buffers`` holds CPU storages to copy into, in the order storages are met;
    it is updated in place to this snapshot's storages (a mismatched size gets a fresh allocation)."""

    def __init__(self, buffers: list[Any]):
        import torch

        self.torch = torch
        self.buffers = buffers
        self.copied: dict[tuple[int, str], Any] = {}

    def copy(self, obj: Any) -> Any:
        result = self._copy(obj)
        del self.buffers[len(self.copied) :]
        return result

    def _copy(self, obj: Any) -> Any:
        if isinstance(obj, self.torch.Tensor):
            return self._tensor(obj)
        if type(obj) in (dict, OrderedDict):
            return type(obj)((key, self._copy(value)) for key, value in obj.items())
        if type(obj) in (list, tuple):
            return type(obj)(self._copy(item) for item in obj)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*(self._copy(item) for item in obj))
        return copy.deepcopy(obj)

    def _tensor(self, tensor: Any) -> Any:
        """The tensor as a view of a CPU copy of its whole storage (copied once per storage)."""
        torch = self.torch
        tensor = tensor.detach()
        if type(tensor) is not torch.Tensor:  # a subclass (DTensor, ...) knows best how to copy itself
            return tensor.clone()
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            return tensor.to("cpu", copy=True)
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), str(storage.device))
        copied = self.copied.get(key)
        if copied is None:
            copied = self.copied[key] = self._storage(storage, index=len(self.copied))
        view = torch.empty(0, dtype=tensor.dtype)
        return view.set_(copied, tensor.storage_offset(), tensor.size(), tensor.stride())

    def _storage(self, storage: Any, index: int) -> Any:
        """Copy into the previous snapshot's index-th storage if it has the same size, else a new one."""
        if storage.device.type != "cpu":
            copied = storage.cpu()  # device -> host: always a fresh copy
        elif index < len(self.buffers) and self.buffers[index].nbytes() == storage.nbytes():
            copied = self.buffers[index]
            copied.copy_(storage)
        else:
            copied = storage.clone()
        if index < len(self.buffers):
            self.buffers[index] = copied
        else:
            self.buffers.append(copied)
        return copied


@atexit.register
def _report_unfinished() -> None:
    """At interpreter exit, log the failure of any background write nobody waited for."""
    for writer in list(_WRITERS):
        try:
            writer.close()
        except BaseException as exc:  # noqa: BLE001 - at exit all we can do is say it
            log.error("background checkpoint save failed: %s", exc)
