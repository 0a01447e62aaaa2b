#!/usr/bin/env python3
"""Benchmark ``ckptctl list`` on a Hugging Face Trainer run against loading every checkpoint's files.

    .venv/bin/python bench/bench_list_layouts.py [--checkpoints 20] [--mb 100] [--repeats 3] [--keep DIR]

1. Builds an HF Trainer ``output_dir`` of N ``checkpoint-<step>/`` directories, each as Trainer
   writes it: ``model.safetensors`` (about MB megabytes, written with the ``safetensors`` library),
   ``optimizer.pt`` (an AdamW state dict, ``torch.save``: two moments per parameter, so twice the
   model), ``scheduler.pt``, ``rng_state.pth``, ``training_args.bin`` (a small ``torch.save``'d dict:
   the real one pickles ``TrainingArguments``), ``config.json`` and a ``trainer_state.json`` whose
   ``log_history`` grows with the step (loss every 10 steps, eval at every save, best tracked).
2. Times, side by side on the same directory (page cache warm for every contender, median of
   ``--repeats``):
   - ``ckptctl list DIR --json`` as a subprocess (a cold interpreter, as a person or cron runs it);
   - ``ops.listing.list_checkpoints(DIR)`` in-process (the ops API the command calls);
   - ``HfTrainerLayout().units(DIR)`` in-process (the layout alone: what the catalog hook calls);
   - the baseline: every checkpoint's files loaded the usual way, ``safetensors.torch.load_file``
     for the model and ``torch.load(weights_only=True)`` for optimizer, scheduler, RNG state and
     training args, plus ``json.load`` of ``trainer_state.json``.
   and prints baseline / list (target >= 30x).
3. Repeats with a model twice as large: the list times stay about the same (they read JSON and
   safetensors headers, never tensor bytes), the baseline doubles.

Until the catalog hook that sends foreign layouts to the registry is merged, ``ckptctl list`` on an
HF run says "no checkpoints" (exit 2): the subprocess and ops rows then print ``n/a`` with that line
and the ratio is taken from the layout row; after the merge the subprocess row is the headline.
Everything is written under a temporary directory (``--keep`` to keep it) and removed at the end;
disk peak about N x 3 x 2 x MB (12 GB by default: the 2x run, after the 1x run is removed).
"""

from __future__ import annotations

import argparse
import json
import os
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CKPTCTL = Path(sys.executable).with_name("ckptctl")

LAYERS = 12  # fixed: the model grows through its dimensions, the tensor count (header size) stays the same
SAVE_STEPS = 500
LOG_STEPS = 10


def make_model(target_mb: float):
    """A Llama-shaped state dict of about ``target_mb`` megabytes of float32."""
    import torch

    hidden = max(8, int(math.sqrt(target_mb * 2**20 / (LAYERS * 12 * 4))))
    gen = torch.Generator().manual_seed(0)
    model = {"model.embed_tokens.weight": torch.randn(256, hidden, generator=gen)}
    for i in range(LAYERS):
        prefix = f"model.layers.{i}"
        for name, shape in ((f"{prefix}.self_attn.q_proj.weight", (hidden, hidden)),
                            (f"{prefix}.self_attn.k_proj.weight", (hidden, hidden)),
                            (f"{prefix}.self_attn.v_proj.weight", (hidden, hidden)),
                            (f"{prefix}.self_attn.o_proj.weight", (hidden, hidden)),
                            (f"{prefix}.mlp.gate_proj.weight", (2 * hidden, hidden)),
                            (f"{prefix}.mlp.up_proj.weight", (2 * hidden, hidden)),
                            (f"{prefix}.mlp.down_proj.weight", (hidden, 2 * hidden)),
                            (f"{prefix}.input_layernorm.weight", (hidden,)),
                            (f"{prefix}.post_attention_layernorm.weight", (hidden,))):  # fmt: skip
            model[name] = torch.randn(shape, generator=gen)
    model["model.norm.weight"] = torch.ones(hidden)
    return model


def make_optimizer(model: dict, step: int) -> dict:
    import torch

    state = {i: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(t), "exp_avg_sq": torch.zeros_like(t)}
             for i, t in enumerate(model.values())}  # fmt: skip
    groups = [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
               "foreach": None, "maximize": False, "capturable": False, "differentiable": False, "fused": None,
               "params": list(range(len(model)))}]  # fmt: skip
    return {"state": state, "param_groups": groups}


def trainer_state(step: int, total: int, best_step: int, history: list[dict]) -> dict:
    return {
        "best_global_step": best_step,
        "best_metric": next(e["eval_loss"] for e in history if e.get("step") == best_step and "eval_loss" in e),
        "best_model_checkpoint": f"out/checkpoint-{best_step}",
        "epoch": step / (total / 3),
        "eval_steps": SAVE_STEPS,
        "global_step": step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": history,
        "logging_steps": LOG_STEPS,
        "max_steps": total,
        "num_input_tokens_seen": 0,
        "num_train_epochs": 3,
        "save_steps": SAVE_STEPS,
        "stateful_callbacks": {"TrainerControl": {"args": {"should_save": True}, "attributes": {}}},
        "total_flos": 1.0e15 * step,
        "train_batch_size": 8,
        "trial_name": None,
        "trial_params": None,
    }


def write_run(directory: Path, checkpoints: int, target_mb: float) -> int:
    """An HF Trainer output_dir of ``checkpoints`` checkpoints. Returns the bytes written."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    model = make_model(target_mb)
    total = checkpoints * SAVE_STEPS
    history: list[dict] = []
    best_step, best = SAVE_STEPS, math.inf
    written = 0
    for index in range(checkpoints):
        step = (index + 1) * SAVE_STEPS
        for s in range(step - SAVE_STEPS + LOG_STEPS, step + 1, LOG_STEPS):
            history.append({"epoch": s / (total / 3), "grad_norm": 1.0 / (1 + s / 1000), "learning_rate": 5e-5 * (1 - s / total),
                            "loss": 2.5 / (1 + s / 2000), "step": s})  # fmt: skip
        eval_loss = 2.6 / (1 + step / 2000) + (0.4 if index % 3 == 2 else 0.0)  # some evals get worse
        history.append({"epoch": step / (total / 3), "eval_loss": eval_loss, "eval_runtime": 1.5,
                        "eval_samples_per_second": 600.0, "eval_steps_per_second": 75.0, "step": step})  # fmt: skip
        if eval_loss < best:
            best, best_step = eval_loss, step
        unit = directory / f"checkpoint-{step}"
        unit.mkdir()
        for tensor in model.values():
            tensor.add_(1e-3)  # each checkpoint its own bytes
        save_file(model, str(unit / "model.safetensors"), metadata={"format": "pt"})
        torch.save(make_optimizer(model, step), unit / "optimizer.pt")
        torch.save({"base_lrs": [5e-5], "last_epoch": step, "_step_count": step + 1, "_last_lr": [5e-5]},
                   unit / "scheduler.pt")  # fmt: skip
        torch.save({"cpu": torch.get_rng_state()}, unit / "rng_state.pth")
        torch.save({"output_dir": "out", "learning_rate": 5e-5, "metric_for_best_model": "eval_loss",
                    "save_steps": SAVE_STEPS, "seed": 42}, unit / "training_args.bin")  # fmt: skip
        (unit / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": LAYERS}))
        (unit / "trainer_state.json").write_text(json.dumps(trainer_state(step, total, best_step, history), indent=2))
        written += sum(p.stat().st_size for p in unit.iterdir())
    return written


# ---------------------------------------------------------------------------------- contenders


def evict(directory: Path) -> None:
    """Drop every file of the run from the page cache (``POSIX_FADV_DONTNEED``): a cold read, as after a reboot
    or on a run nobody touched for a while. Only this run's pages are dropped."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


COLD: list[Path] = []  # set to [directory] while the cold round runs


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        for directory in COLD:
            evict(directory)
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def list_cli(directory: Path):
    command = [str(CKPTCTL), "list", str(directory), "--json"] if CKPTCTL.exists() else \
        [sys.executable, "-m", "ckptctl", "list", str(directory), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return len(json.loads(done.stdout).get("checkpoints", [])), None


def list_ops(directory: Path):
    from ckptctl.errors import CkptctlError
    from ckptctl.ops.listing import list_checkpoints

    try:
        return len(list_checkpoints(directory, use_cache=False).rows), None
    except CkptctlError as exc:
        return None, str(exc)


def list_layout(directory: Path):
    from ckptctl.layouts import registry

    layout = registry.detect(directory)
    if layout is None:
        return None, "no layout recognised"
    units = layout.units(directory)
    layout.protect(units, layout.pointers(directory, units))
    return len(units), None


def load_everything(directory: Path) -> int:
    """What a script does to learn the same facts without ckptctl: load every file of every checkpoint."""
    import torch
    from safetensors.torch import load_file

    loaded = 0
    for unit in sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        tensors = load_file(str(unit / "model.safetensors"))
        loaded += len(tensors)
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
            loaded += len(torch.load(unit / name, map_location="cpu", weights_only=True))
        with open(unit / "trainer_state.json") as fh:
            loaded += len(json.load(fh)["log_history"])
        del tensors
    return loaded


def measure(directory: Path, repeats: int, checkpoints: int) -> dict:
    figures: dict = {}
    for label, fn in (("ckptctl list --json (subprocess)", list_cli), ("ops.list_checkpoints (in-process)", list_ops),
                      ("layout units (in-process)", list_layout)):  # fmt: skip
        if fn is not list_cli:
            fn(directory)  # untimed: imports (the subprocess row pays them, every time, as a real run does)
        seconds, (count, why) = timed(lambda fn=fn: fn(directory), repeats)
        if count is not None and count != checkpoints:
            why = f"listed {count} of {checkpoints} checkpoints"
            count = None
        figures[label] = (seconds, why) if count is None else (seconds, None)
    baseline, _ = timed(lambda: load_everything(directory), max(1, repeats - 1))
    figures["baseline: load every file (torch/safetensors)"] = (baseline, None)
    return figures


def report(title: str, figures: dict) -> float | None:
    baseline = figures["baseline: load every file (torch/safetensors)"][0]
    print(f"\n{title}")
    headline = None
    for label, (seconds, why) in figures.items():
        if why:
            print(f"  {label:48s}      n/a   ({why})")
            continue
        ratio = baseline / seconds if seconds else math.inf
        print(f"  {label:48s} {seconds:8.3f} s   {ratio:8.1f}x faster than the baseline" if not label.startswith("baseline")
              else f"  {label:48s} {seconds:8.3f} s")  # fmt: skip
        if headline is None and not label.startswith("baseline"):
            headline = ratio
    return headline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--mb", type=float, default=100.0, help="model size per checkpoint (optimizer.pt is 2x)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="ckptctl-bench-hf-"))
    results = {}
    try:
        for scale in (1, 2):
            run = base / f"hf-run-{scale}x"
            if run.exists():
                shutil.rmtree(run)
            start = time.perf_counter()
            written = write_run(run, args.checkpoints, args.mb * scale)
            print(f"\nwrote {args.checkpoints} checkpoints, model {args.mb * scale:.0f} MB each, "
                  f"{written / 1e9:.2f} GB in all, in {time.perf_counter() - start:.0f} s: {run}")  # fmt: skip
            figures = measure(run, args.repeats, args.checkpoints)
            results[scale] = figures
            results[f"headline{scale}"] = report(f"{args.checkpoints}-checkpoint HF run, {args.mb * scale:.0f} MB model, "
                                                 "page cache warm:", figures)  # fmt: skip
            COLD.append(run)
            try:
                cold = measure(run, args.repeats, args.checkpoints)
            finally:
                COLD.clear()
            results[f"cold{scale}"] = cold
            results[f"coldheadline{scale}"] = report(f"{args.checkpoints}-checkpoint HF run, {args.mb * scale:.0f} MB model, "
                                                     "page cache dropped before every run:", cold)  # fmt: skip
            if not args.keep:
                shutil.rmtree(run)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print("\nflat in checkpoint size (list time at 2x model / at 1x; the baseline for scale):")
    for label in results[1]:
        one, why1 = results[1][label]
        two, why2 = results[2][label]
        if why1 or why2:
            print(f"  {label:48s}      n/a")
        else:
            print(f"  {label:48s} {one:8.3f} s -> {two:8.3f} s   ({two / one:.2f}x)")
    for key, what in (("headline1", "page cache warm"), ("coldheadline1", "page cache cold")):
        headline = results.get(key)
        if headline is not None:
            verdict = "meets" if headline >= 30 else "MISSES"
            print(f"headline ({what}): ckptctl list as a command is {headline:.0f}x faster than loading every file "
                  f"({verdict} the 30x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
