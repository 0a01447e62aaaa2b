#!/usr/bin/env python3
"""Benchmark ``ckptctl list`` of a torchtitan run: this tree against a baseline tree, cold and warm cache.

    .venv/bin/python bench/bench_list_torchtitan.py [--steps 20] [--layers 32] [--repeats 3] [--baseline DIR] [--keep DIR]

1. Builds torchtitan's ``checkpoint/`` folder: ``--steps`` ``step-N/`` directories, each one
   ``torch.distributed.checkpoint`` save of a Llama-shaped state dict as torchtitan writes it
   (``model.*`` weights, ``optimizer.state.*.{step,exp_avg,exp_avg_sq}`` and
   ``optimizer.param_groups.*`` flattened, ``lr_scheduler.last_epoch``, ``train_state.step`` and
   ``ntokens_seen``). The tensors are tiny (the listing never reads tensor bytes) but their count
   is an 8B model's (``--layers 32``: ~2,900 entries), so each ``.metadata`` is about 0.5 MB, as
   in a real run.
2. Times ``ckptctl list DIR --json`` as a subprocess (a cold interpreter, as a person runs it),
   median of ``--repeats``, side by side in this one run:
   - the baseline tree (``--baseline DIR``; by default ``git archive main`` unpacked into a
     temporary directory and put first on ``PYTHONPATH``);
   - this tree with the listing cache empty before every run ("cold");
   - this tree with the cache filled by the previous run ("warm");
   and checks that all three print the same rows (exit 1 when they differ);
3. Times ``ckptctl du --json`` of the same folder, baseline and this tree.

What changed (ckptctl.formats.dcp): a parsed ``.metadata`` is remembered in the process by the
identity of the file, so the catalog's read of a unit reuses the layout's parse instead of
parsing again. ``list`` parsed each ``.metadata`` twice before, once now; ``du`` parses once in
both (the layout's), and no parse survives the process, so a warm listing cache gains nothing here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def model_state(layers: int, step: int) -> dict:
    """torchtitan's flattened state dict (names as its ModelWrapper/OptimizersContainer give them)."""
    import torch

    params = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    for i in range(layers):
        params += [f"layers.{i}.{name}.weight" for name in (
            "attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
            "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")]  # fmt: skip
    state: dict = {name: torch.full((4, 4), float(step)) for name in params}  # the model's, at the top level
    optimizer: dict = {}  # flatten_optimizer_state_dict: one level under "optimizer"
    for name in params:
        optimizer[f"state.{name}.step"] = torch.tensor(float(step))
        optimizer[f"state.{name}.exp_avg"] = torch.zeros(4, 4)
        optimizer[f"state.{name}.exp_avg_sq"] = torch.zeros(4, 4)
    for key, value in (("lr", 3e-4), ("betas", (0.9, 0.95)), ("eps", 1e-8), ("weight_decay", 0.1),
                       ("amsgrad", False), ("foreach", None), ("maximize", False), ("capturable", False),
                       ("differentiable", False), ("fused", None), ("initial_lr", 3e-4)):  # fmt: skip
        for name in params:
            optimizer[f"param_groups.{name}.{key}"] = value
    state["optimizer"] = optimizer
    state["lr_scheduler"] = {"last_epoch": step}
    state["train_state"] = {"step": step, "ntokens_seen": step * 8192}
    return state


def write_run(folder: Path, steps: int, layers: int) -> Path:
    import warnings

    import torch.distributed.checkpoint as dcp

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, steps + 1):
        step = n * 500
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(model_state(layers, step), checkpoint_id=folder / f"step-{step}")
    return folder


def baseline_tree(into: Path) -> Path:
    """``git archive main`` of this repository, unpacked: the code before this change."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "main"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_list(tree: Path, folder: Path, cache: Path, command: str = "list") -> tuple[float, object]:
    env = dict(os.environ, PYTHONPATH=str(tree), CKPTCTL_CACHE_DIR=str(cache))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ckptctl", command, str(folder), "--json"], capture_output=True,
                          text=True, env=env, cwd=str(tree), timeout=900)  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed under {tree}: {done.stderr.strip()}")
    doc = json.loads(done.stdout)
    return seconds, doc["checkpoints"] if command == "list" else doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a tree of the code to compare against (default: git archive main)")
    parser.add_argument("--keep", type=Path, help="build the run here and keep it (reused when it exists)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-titan-"))
    try:
        folder = (args.keep or scratch / "run") / "checkpoint"
        if not folder.exists():
            write_run(folder, args.steps, args.layers)
        sizes = [os.path.getsize(p) for p in folder.glob("step-*/.metadata")]
        print(f"{len(sizes)} step directories, .metadata {min(sizes) / 1024:.0f}-{max(sizes) / 1024:.0f} KB each")
        base = args.baseline or baseline_tree(scratch / "baseline")
        rows: dict[str, list[float]] = {"baseline (main), cold cache": [], "this tree, cold cache": [],
                                        "this tree, warm cache": []}  # fmt: skip
        outputs = {}
        for _ in range(args.repeats):
            for label, tree, warm in (("baseline (main), cold cache", base, False), ("this tree, cold cache", ROOT, False),
                                      ("this tree, warm cache", ROOT, True)):  # fmt: skip
                cache = scratch / f"cache-{'warm' if warm else 'cold'}"
                if not warm:
                    shutil.rmtree(cache, ignore_errors=True)
                elif not cache.exists():
                    run_list(tree, folder, cache)  # fills it (untimed)
                seconds, rows_out = run_list(tree, folder, cache)
                rows[label].append(seconds)
                outputs[label] = rows_out
        first = outputs["baseline (main), cold cache"]
        base_time = statistics.median(rows["baseline (main), cold cache"])
        print(f"ckptctl list --json of {folder} (subprocess, median of {args.repeats}):")
        for label, times in rows.items():
            same = "same rows" if outputs[label] == first else "ROWS DIFFER from the baseline"
            median = statistics.median(times)
            print(f"  {label:30s} {median:7.3f} s   {base_time / median:6.1f}x   {same}")
        du = {"baseline (main)": [], "this tree": []}
        for _ in range(args.repeats):
            for label, tree in (("baseline (main)", base), ("this tree", ROOT)):
                du[label].append(run_list(tree, folder, scratch / "cache-du", "du")[0])
        print("ckptctl du --json (one parse per unit before and after: the layout's; nothing to share)")
        for label, times in du.items():
            print(f"  {label:30s} {statistics.median(times):7.3f} s")
        return 0 if all(out == first for out in outputs.values()) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the run itself survives when built under --keep


if __name__ == "__main__":
    raise SystemExit(main())
