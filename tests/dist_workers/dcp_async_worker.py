"""Non-blocking sharded saves on ``torchrun --nproc_per_node 2`` (gloo, CPU), driven by tests/test_sharded.py.

    dcp_async_worker.py DIR LOGDIR

A DTensor (rows sharded over the 2 ranks) holds ``BASE + step`` when ``save(step, blocking=False)``
is called; right after it returns, the loop overwrites it with -1 and runs a training collective
(``all_reduce`` on the default group) while the background write is in flight. Rank 0's commit of
step 4 is made to fail (rank 1's writes succeed): both ranks must raise at the next call (step 5's
first attempt), which is retried. After ``close()`` each rank loads ``latest`` back.

Each rank writes LOGDIR/rank<N>.json: the errors it raised, what it loaded, and its pid.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from ckptctl.training import dcp_save
from ckptctl.errors import SaveError
from ckptctl.training.manager import CheckpointManager

ROWS, COLS = 256, 64
BASE = torch.arange(ROWS * COLS, dtype=torch.float32).reshape(ROWS, COLS)
FAILING_COMMIT = "rolling_step_000004"


def _fail_rank0_commit_of_step_4() -> None:
    real = dcp_save.commit_directory  # the name DCP saves commit through (imported there from ckptctl.durable)

    def commit(tmp, final, previous=None):
        if final.name == FAILING_COMMIT:
            raise SaveError(f"injected: rank 0 cannot commit {FAILING_COMMIT}")
        real(tmp, final, previous)

    dcp_save.commit_directory = commit


def main() -> None:
    warnings.filterwarnings("ignore")
    directory, logdir = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    if rank == 0:
        _fail_rank0_commit_of_step_4()
    log: dict = {"pid": os.getpid(), "raised": []}
    weight = distribute_tensor(BASE.clone(), mesh, [Shard(0)])
    local = weight.to_local()  # this rank's rows, shared with the DTensor
    mine = BASE.chunk(2)[rank]
    state = {"model": {"w": weight}, "dataloader_state": {"seen": []}, "epoch": 0}
    mgr = CheckpointManager(directory, keep_last_n=10, format="dcp")
    seen = state["dataloader_state"]["seen"]
    step = 1
    while step <= 6:
        local.copy_(mine + step)
        seen[:] = range(1, step + 1)
        try:
            mgr.save(state, step=step, blocking=False)
        except SaveError as exc:
            log["raised"].append([step, str(exc)])
            continue  # retry this step: the error was the previous save's
        local.fill_(-1)  # the loop changes the state while the write is in flight
        seen.append(-1)
        total = torch.ones(1)
        dist.all_reduce(total)  # a training collective on the default group, concurrent with the write
        log.setdefault("all_reduce", []).append(total.item())
        step += 1
    mgr.close()
    loaded = {"model": {"w": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(0)])},
              "dataloader_state": {"seen": [0] * 6}, "epoch": -1, "step": -1}  # fmt: skip
    log["loaded_path"] = str(mgr.load_into(loaded, "latest"))
    log["loaded_step"] = loaded["step"]
    log["loaded_seen"] = loaded["dataloader_state"]["seen"]
    log["loaded_ok"] = bool(torch.equal(loaded["model"]["w"].to_local(), mine + 6))
    (logdir / f"rank{rank}.json").write_text(json.dumps(log))
    dist.barrier()  # torch can abort a rank that destroys its group right after a collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
