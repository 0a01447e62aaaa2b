"""One rule for "is this directory ckptctl's own?" (:func:`ckptctl.layouts.catalog.is_native`).

Every predicate and every command's view is asked, over a table of edge-case directories, which
layout the directory is; they must all give the same answer, the one the rule gives. The plans of
``prune`` are then pinned case by case (what is kept, what would be removed), next to what prune
planned before the rule was unified (recorded from the code before it): prune never removes more
in any of these cases, except where the directory is now seen as the framework run it is (an HF
or Lightning run beside a dangling ``latest.pt``) and its plan is the one prune makes for that run
without the dangling link.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Callable

import pytest

from ckptctl.errors import BadInputError, CheckpointError
from ckptctl.layouts import catalog
from ckptctl.layouts.loose import LooseFilesLayout
from ckptctl.ops import foreign
from ckptctl.ops.retention import Policy
from tests.factories import plausible_bytes
from tests.fake_layouts import FIXTURES

OLD = 1_000_000.0  # an mtime far in the past: a partial write this old is stale
NATIVE = "ckptctl"


# ------------------------------------------------------------------------------------ directories


def _fixture(name: str) -> Callable[[Path], None]:
    def build(run: Path) -> None:
        shutil.copytree(FIXTURES / name, run, symlinks=True, dirs_exist_ok=True)

    return build


def _native_files(run: Path) -> None:
    run.mkdir(exist_ok=True)
    for name in ("rolling_step_000100.pt", "rolling_step_000200.pt", "rolling_step_000300.pt"):
        (run / name).write_bytes(plausible_bytes(200))


def _dangling(run: Path) -> None:
    run.mkdir(exist_ok=True)
    os.symlink("rolling_step_000900.pt", run / "latest.pt")


def _loop(run: Path) -> None:
    run.mkdir(exist_ok=True)
    os.symlink("latest.pt", run / "latest.pt")


def _fifo(run: Path) -> None:
    run.mkdir(exist_ok=True)
    os.mkfifo(run / "latest.pt")


def _own_tmp(run: Path) -> None:
    """What a killed ckptctl writer leaves: ``<name>.<pid>.<random>.tmp`` (ckptctl.durable)."""
    run.mkdir(exist_ok=True)
    path = run / "rolling_step_000400.pt.77.ab12cd34.tmp"
    path.write_bytes(b"\0" * 64)
    os.utime(path, (OLD, OLD))


def _other_tmp(run: Path) -> None:
    """A ``*.tmp`` that is not one of ckptctl's names (an editor's, a copy tool's)."""
    run.mkdir(exist_ok=True)
    path = run / "notes.tmp"
    path.write_bytes(b"draft")
    os.utime(path, (OLD, OLD))


def _dcp(run: Path) -> None:
    from tests.factories import write_dcp

    run.mkdir(exist_ok=True)
    write_dcp(run / "rolling_step_000100", step=100)


def _own_dcp_tmp(run: Path) -> None:
    """A sharded save killed before its rename: DCP's files under ``<name>.tmp/`` (the plain-DCP
    layout recognises a directory of DCP directories)."""
    from tests.factories import write_dcp

    run.mkdir(exist_ok=True)
    write_dcp(run / "rolling_step_000500.tmp", step=500)
    os.utime(run / "rolling_step_000500.tmp", (OLD, OLD))


def _file_name_on_a_directory(run: Path) -> None:
    (run / "latest.pt").mkdir(parents=True)


def _native_latest(run: Path) -> None:
    run.mkdir(exist_ok=True)
    (run / "latest.pt").write_bytes(plausible_bytes(200))


def _empty_latest(run: Path) -> None:
    run.mkdir(exist_ok=True)
    (run / "latest.pt").write_bytes(b"")


def _replaced_dir(run: Path) -> None:
    """What ``restore`` keeps of a directory it replaced: a record, nobody's checkpoint."""
    (run / "checkpoint-2.replaced-20261206_120000").mkdir(parents=True)


def _all(*builders: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(run: Path) -> None:
        for builder in builders:
            builder(run)

    return build


HF, LIGHTNING, LOOSE, DEEPSPEED = "hf-trainer", "lightning", "loose", "deepspeed"

# case -> (how to build it, the layout every view must see)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "dangling latest.pt alone": (_dangling, NATIVE),
    "dangling latest.pt + native files": (_all(_native_files, _dangling), NATIVE),
    "dangling latest.pt + HF": (_all(_fixture("hf_trainer"), _dangling), HF),
    "dangling latest.pt + Lightning": (_all(_fixture("lightning_link"), _dangling), LIGHTNING),
    "dangling latest.pt + loose": (_all(_fixture("loose"), _dangling), NATIVE),
    "looping latest.pt alone": (_loop, NATIVE),
    "looping latest.pt + HF": (_all(_fixture("hf_trainer"), _loop), HF),
    "FIFO latest.pt alone": (_fifo, NATIVE),
    "FIFO latest.pt + HF": (_all(_fixture("hf_trainer"), _fifo), HF),
    "FIFO latest.pt + loose": (_all(_fixture("loose"), _fifo), NATIVE),
    "own *.tmp alone": (_own_tmp, NATIVE),
    "own *.tmp + HF": (_all(_fixture("hf_trainer"), _own_tmp), NATIVE),
    "own *.tmp + loose": (_all(_fixture("loose"), _own_tmp), NATIVE),
    "other *.tmp + HF": (_all(_fixture("hf_trainer"), _other_tmp), HF),
    "other *.tmp + loose": (_all(_fixture("loose"), _other_tmp), LOOSE),
    "native DCP directory alone": (_dcp, NATIVE),
    "own sharded save in progress alone": (_own_dcp_tmp, NATIVE),
    "latest.pt/ directory alone": (_file_name_on_a_directory, NATIVE),
    "latest.pt/ directory + loose": (_all(_fixture("loose"), _file_name_on_a_directory), NATIVE),
    "latest.pt file + HF": (_all(_fixture("hf_trainer"), _native_latest), NATIVE),
    "latest.pt file + Lightning": (_all(_fixture("lightning_link"), _native_latest), NATIVE),
    "latest.pt file + loose": (_all(_fixture("loose"), _native_latest), NATIVE),
    "empty latest.pt alone": (_empty_latest, NATIVE),
    "empty latest.pt + HF": (_all(_fixture("hf_trainer"), _empty_latest), NATIVE),
    "replaced directory + HF": (_all(_fixture("hf_trainer"), _replaced_dir), HF),
    "DeepSpeed (a 'latest' file)": (_fixture("deepspeed"), DEEPSPEED),
}


def build(case: str, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    CASES[case][0](run)
    return run


# ------------------------------------------------------------------------------------------ views


def _layout_or_native(call: Callable[[], str | None]) -> str:
    """The layout a view acted on; ckptctl's own path when it says no checkpoints (nothing of its own)."""
    try:
        return call() or NATIVE
    except (BadInputError, CheckpointError) as exc:
        text = str(exc)
        if "no checkpoints" in text or "empty directory" in text or "no complete, valid" in text:
            return NATIVE if "no checkpoints" in text or "empty directory" in text else "error: " + text
        return "error: " + text


def _unit_at_view(run: Path) -> str:
    for name in sorted(os.listdir(run)):
        entry = catalog.unit_at(run / name)
        if entry is not None and entry.unit is not None:
            return entry.unit.layout
    return NATIVE


def _validate_view(run: Path) -> str | None:
    from ckptctl.ops.integrity import collect_targets

    targets, _skipped = collect_targets([run])
    return next((t.layout for t in targets if hasattr(t, "layout") and isinstance(t.layout, str)), None)


def _du_view(run: Path) -> str | None:
    from ckptctl.ops.usage import measure

    return measure(run).layout


def _list_view(run: Path) -> str | None:
    from ckptctl.ops.listing import list_checkpoints

    return list_checkpoints(run).layout


def _restore_view(run: Path) -> str | None:
    from ckptctl.ops.restore import plan_heal

    layout = plan_heal(run).layout
    return None if layout == NATIVE else layout


def _prune_view(run: Path) -> str | None:
    from ckptctl.ops.prune import plan_prune

    return plan_prune(run, POLICY).layout


def _open_run_view(run: Path) -> str | None:
    found = foreign.open_run(run)
    return found.layout.name if found is not None else None


def views(run: Path) -> dict[str, str]:
    """Which layout each predicate and each command sees ``run`` as (``ckptctl``: its own)."""
    names = sorted(os.listdir(run))
    return {
        "is_native": NATIVE if catalog.is_native(run) else "-",
        "has_native_names": NATIVE if foreign.has_native_names(run) else "-",
        "loose.recognise": LOOSE if LooseFilesLayout().recognise(run, names) else "-",
        "scan": catalog.layout_of(catalog.scan(run)) or NATIVE,
        "scan(broken_links)": catalog.layout_of(catalog.scan(run, broken_links=True)) or NATIVE,
        "unit_at": _unit_at_view(run),
        "list": _layout_or_native(lambda: _list_view(run)),
        "du": _layout_or_native(lambda: _du_view(run)),
        "validate": _layout_or_native(lambda: _validate_view(run)),
        "prune": _layout_or_native(lambda: _prune_view(run)),
        "restore": _layout_or_native(lambda: _restore_view(run)),
        "resume-cmd (open_run)": _open_run_view(run) or NATIVE,
    }


def _agrees(view: str, seen: str, expected: str) -> bool:
    if view == "is_native" or view == "has_native_names":
        return (seen == NATIVE) == (expected == NATIVE)
    if view == "loose.recognise":  # asked only after every framework's layout declined
        return seen == LOOSE if expected == LOOSE else seen == "-" if expected == NATIVE else True
    return seen == expected


@pytest.mark.parametrize("case", list(CASES))
def test_every_view_sees_one_layout(case, tmp_path):
    run = build(case, tmp_path)
    expected = CASES[case][1]
    seen = views(run)
    disagree = {view: got for view, got in seen.items() if not _agrees(view, got, expected)}
    assert not disagree, f"{case}: expected {expected}, these views disagree: {disagree}"


# ------------------------------------------------------------------------------------------ prune

POLICY = Policy(keep_rolling=1, keep_emergency=1, keep_last=1, stale_temp_after=timedelta(hours=1))

# What ``prune --keep-last 1 --keep-rolling 1 --stale-after 1h --dry-run`` removed before the rule was
# one (recorded at integ 807daf2): case -> names removed (None: prune refused, bad input).
BEFORE_REMOVED: dict[str, set[str] | None] = {
    'dangling latest.pt alone': set(),
    'dangling latest.pt + native files': {'rolling_step_000100.pt', 'rolling_step_000200.pt'},
    'dangling latest.pt + HF': set(),
    'dangling latest.pt + Lightning': set(),
    'dangling latest.pt + loose': set(),
    'looping latest.pt alone': set(),
    'looping latest.pt + HF': {'checkpoint-4'},
    'FIFO latest.pt alone': None,
    'FIFO latest.pt + HF': set(),
    'FIFO latest.pt + loose': None,
    'own *.tmp alone': {'rolling_step_000400.pt.77.ab12cd34.tmp'},
    'own *.tmp + HF': {'checkpoint-4', 'rolling_step_000400.pt.77.ab12cd34.tmp'},
    'own *.tmp + loose': {'rolling_step_000400.pt.77.ab12cd34.tmp'},
    'other *.tmp + HF': {'checkpoint-4', 'notes.tmp'},
    'other *.tmp + loose': {'notes.tmp'},
    'native DCP directory alone': set(),
    'own sharded save in progress alone': set(),
    'latest.pt/ directory alone': None,
    'latest.pt/ directory + loose': None,
    'latest.pt file + HF': set(),
    'latest.pt file + Lightning': set(),
    'latest.pt file + loose': set(),
    'empty latest.pt alone': set(),
    'empty latest.pt + HF': set(),
    'replaced directory + HF': {'checkpoint-4'},
    "DeepSpeed (a 'latest' file)": {'global_step5'},
}

# The plans now: case -> (kept, removed); None: bad input (nothing of ckptctl's own, nobody else's).
AFTER_PLANS: dict[str, tuple[set[str], set[str]] | None] = {
    'dangling latest.pt alone': ({'latest.pt'}, set()),
    'dangling latest.pt + native files': ({'latest.pt', 'rolling_step_000300.pt'}, {'rolling_step_000100.pt', 'rolling_step_000200.pt'}),
    'dangling latest.pt + HF': ({'checkpoint-2', 'checkpoint-6'}, {'checkpoint-4'}),
    'dangling latest.pt + Lightning': ({'epoch=0-step=4-val_loss=0.56.ckpt', 'epoch=1-step=8-val_loss=0.57.ckpt'}, set()),
    'dangling latest.pt + loose': ({'latest.pt'}, set()),
    'looping latest.pt alone': ({'latest.pt'}, set()),
    'looping latest.pt + HF': ({'checkpoint-2', 'checkpoint-6'}, {'checkpoint-4'}),
    'FIFO latest.pt alone': None,
    'FIFO latest.pt + HF': ({'checkpoint-2', 'checkpoint-6'}, {'checkpoint-4'}),
    'FIFO latest.pt + loose': None,
    'own *.tmp alone': (set(), {'rolling_step_000400.pt.77.ab12cd34.tmp'}),
    'own *.tmp + HF': (set(), {'rolling_step_000400.pt.77.ab12cd34.tmp'}),
    'own *.tmp + loose': (set(), {'rolling_step_000400.pt.77.ab12cd34.tmp'}),
    'other *.tmp + HF': ({'checkpoint-2', 'checkpoint-6'}, {'checkpoint-4', 'notes.tmp'}),
    'other *.tmp + loose': ({'checkpoint.pth', 'legacy.pt', 'model.pt', 'model.safetensors', 'pytorch_model.bin', 'tutorial.tar'}, {'notes.tmp'}),
    'native DCP directory alone': ({'rolling_step_000100'}, set()),
    'own sharded save in progress alone': (set(), {'rolling_step_000500.tmp'}),
    'latest.pt/ directory alone': None,
    'latest.pt/ directory + loose': None,
    'latest.pt file + HF': ({'latest.pt'}, set()),
    'latest.pt file + Lightning': ({'latest.pt'}, set()),
    'latest.pt file + loose': ({'latest.pt'}, set()),
    'empty latest.pt alone': ({'latest.pt'}, set()),
    'empty latest.pt + HF': ({'latest.pt'}, set()),
    'replaced directory + HF': ({'checkpoint-2', 'checkpoint-6'}, {'checkpoint-4'}),
    "DeepSpeed (a 'latest' file)": ({'global_step10'}, {'global_step5'}),
}

# Cases where the directory is now the framework run it is; the plan is that run's own (checked below).
NOW_A_RUN = {"dangling latest.pt + HF", "dangling latest.pt + Lightning", "looping latest.pt + HF", "FIFO latest.pt + HF"}

# Cases where the directory is now ckptctl's own, as ``list`` already showed it (checked below).
NOW_OWN = {"own sharded save in progress alone"}


def prune_plan(run: Path) -> tuple[set[str], set[str]] | None:
    from ckptctl.ops.prune import plan_prune

    try:
        plan = plan_prune(run, POLICY)
    except BadInputError:
        return None
    kept = {d.entry.name for d in plan.retention.keep}
    removed = {e.name for e in plan.deletions}
    return kept, removed


@pytest.mark.parametrize("case", list(CASES))
def test_prune_plan_of_each_case(case, tmp_path):
    """What is kept and what would be removed, case by case (``None``: bad input, nothing to prune)."""
    assert prune_plan(build(case, tmp_path)) == AFTER_PLANS[case]


@pytest.mark.parametrize("case", [c for c in CASES if c not in NOW_A_RUN | NOW_OWN])
def test_prune_removes_no_more_than_before(case):
    before, after = BEFORE_REMOVED[case], AFTER_PLANS[case]
    removed = after[1] if after is not None else set()
    assert removed <= (before or set()), f"{case}: now removes {removed - (before or set())} too"


@pytest.mark.parametrize("case", sorted(NOW_A_RUN))
def test_a_run_beside_a_dead_link_is_pruned_like_the_run_alone(case, tmp_path):
    """The only cases whose plan grew: the dead ``latest.pt`` (or FIFO) no longer hides the framework
    run, and the run is pruned exactly as it is without it; the dead name itself is left alone."""
    with_trace = prune_plan(build(case, tmp_path / "with"))
    fixture = "lightning_link" if "Lightning" in case else "hf_trainer"
    alone = tmp_path / "alone" / "run"
    _fixture(fixture)(alone)
    assert with_trace == prune_plan(alone)
    assert with_trace is not None and "latest.pt" not in with_trace[0] | with_trace[1]


def test_an_abandoned_sharded_save_is_ckptctls_partial_write_not_a_dcp_run(tmp_path):
    """``rolling_step_000500.tmp/`` alone: ``list`` showed it as ckptctl's partial write while prune,
    restore and resume-cmd took it for a plain-DCP run's checkpoint (kept, and resumable from). Now
    it is ckptctl's everywhere, so prune removes it only as a stale partial write: with
    ``--stale-after`` and when older than that, never otherwise."""
    from ckptctl.ops.prune import plan_prune

    run = build("own sharded save in progress alone", tmp_path)
    assert foreign.open_run(run) is None
    assert plan_prune(run, Policy(keep_last=1)).deletions == []
    assert AFTER_PLANS["own sharded save in progress alone"] == (set(), {"rolling_step_000500.tmp"})
    assert prune_plan(run) == AFTER_PLANS["own sharded save in progress alone"]
    os.utime(run / "rolling_step_000500.tmp")  # written to just now: a save in progress
    assert prune_plan(run) == (set(), set())


def test_restore_heals_a_dangling_latest_pt_as_ckptctls(tmp_path):
    """After a crash ``latest.pt`` dangles: restore relinks it to the newest valid checkpoint, also
    when the directory holds another framework's run too (ckptctl's checkpoints decide)."""
    from ckptctl.ops.restore import plan_heal
    from tests.factories import write_checkpoint

    run = tmp_path / "run"
    _fixture("hf_trainer")(run)
    for step in (100, 200):
        write_checkpoint(run / f"rolling_step_{step:06d}.pt", step=step)
    os.symlink("rolling_step_000900.pt", run / "latest.pt")
    plan = plan_heal(run)
    assert plan.layout == NATIVE and not plan.unrestorable
    assert [(a.target, a.source.name, a.broken_link) for a in plan.actions] == [("latest.pt", "rolling_step_000200.pt", True)]


@pytest.mark.parametrize(("name", "expected"), [
    ("rolling_step_000400.pt.77.ab12cd34.tmp", "checkpoint"),  # ckptctl.durable's partial write
    ("latest.pt.123.deadbeef.tmp", "checkpoint"),
    ("rolling_step_000500.tmp", "checkpoint"),  # a sharded save in progress
    ("rolling_step_000500.deleting.tmp", "checkpoint"),  # durable.remove_entry's rename
    ("notes.tmp", None),
    ("checkpoint-4.deleting.tmp", None),  # prune removing an HF unit: not ckptctl's checkpoint name
    ("latest.pt.replaced-20261206_120000", None),  # restore's record, kept in any layout's directory
    ("model.pt", None),
])
def test_which_names_are_ckptctls(name, expected, tmp_path):
    (tmp_path / name).write_bytes(b"")
    with os.scandir(tmp_path) as it:
        (dirent,) = list(it)
    assert catalog._native_name(dirent) == expected


def test_a_native_name_is_a_checkpoint_only_with_what_ckptctl_writes_under_it(tmp_path):
    (tmp_path / "rolling_step_000100.pt").write_bytes(b"")  # a file named like a file
    (tmp_path / "rolling_step_000200").mkdir()  # a directory named like a sharded checkpoint
    os.symlink("rolling_step_000100.pt", tmp_path / "latest.pt")  # a link to a checkpoint is one
    (tmp_path / "best_model.pt").mkdir()  # a directory named like a file
    (tmp_path / "latest").write_text("global_step5")  # DeepSpeed's pointer file
    with os.scandir(tmp_path) as it:
        found = {d.name: catalog._native_name(d) for d in it}
    assert found == {"rolling_step_000100.pt": "checkpoint", "rolling_step_000200": "checkpoint",
                     "latest.pt": "checkpoint", "best_model.pt": "trace",
                     "latest": "trace"}  # fmt: skip
