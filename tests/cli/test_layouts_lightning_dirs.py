"""list, validate, du, prune and resume-cmd on Lightning runs whose checkpoints are directories
(FSDPStrategy sharded: the lightning_fsdp fixture; DeepSpeedStrategy: built from DeepSpeed's real
tag files, see tests/layouts/test_lightning_dirs.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests.layouts.test_lightning_dirs import E0, E1, _deepspeed_dir

runner = CliRunner()
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "frameworks" / "lightning_fsdp"
E0V1 = "epoch=0-step=4-val_loss=0.56-v1.ckpt"  # a second run's save of the same step: neither best nor newest


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def fsdp_run(tmp_path: Path, *, extra: bool = False) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run, symlinks=True)
    if extra:
        shutil.copytree(run / E0, run / E0V1)
    return run


def rows(run: Path) -> dict[str, dict]:
    result = invoke("list", run, "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)["checkpoints"]}


def test_list_shows_directory_units_with_their_metadata(tmp_path):
    found = rows(fsdp_run(tmp_path))
    assert sorted(found) == sorted([E0, E1, "last.ckpt"])
    first = found[E0]
    assert (first["layout"], first["step"], first["epoch"], first["monitor"]) == ("lightning", 4, 0, "val_loss")
    assert first["complete"] is True and first["best"] is True and first["status"] == "ok"
    assert first["size_bytes"] == sum(p.stat().st_size for p in (tmp_path / "run" / E0).iterdir())
    assert found["last.ckpt"]["link"] == E1 and found["last.ckpt"]["status"] == "ok"


def test_validate_directory_units_and_a_truncated_shard(tmp_path):
    run = fsdp_run(tmp_path)
    result = invoke("validate", run)
    assert result.exit_code == 0, result.output
    assert f"{E0}: valid" in result.stdout and f"{E1}: valid" in result.stdout
    shard = run / E1 / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size - 100)
    result = invoke("validate", run)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{E1}: invalid" in result.stdout and f"{E0}: valid" in result.stdout


def test_validate_missing_meta_pt_and_a_dangling_last_link(tmp_path):
    run = fsdp_run(tmp_path)
    (run / E0 / "meta.pt").unlink()
    result = invoke("validate", run)
    assert result.exit_code == 1 and "missing: meta.pt" in result.stdout
    run2 = fsdp_run(tmp_path / "b")
    shutil.rmtree(run2 / E1)
    assert rows(run2)["last.ckpt"]["status"] == "dangling"
    assert invoke("validate", run2).exit_code == 1


def test_du_counts_every_file_of_a_directory_unit(tmp_path):
    run = fsdp_run(tmp_path)
    result = invoke("du", run, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = sum(p.stat().st_size for d in (E0, E1) for p in (run / d).iterdir())
    assert doc["total"]["files"] == 6 and doc["total"]["apparent_bytes"] == expected
    assert doc["counts"]["checkpoint"] == 2


def test_prune_removes_a_whole_directory_unit_and_keeps_best_newest_and_the_last_target(tmp_path):
    run = fsdp_run(tmp_path, extra=True)
    result = invoke("prune", run, "--keep-last", "1", "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["removed"] == [E0V1]
    assert not os.path.lexists(run / E0V1)
    assert sorted(n for n in os.listdir(run) if not n.startswith(".ckptctl")) == sorted([E0, E1, "last.ckpt"])
    assert sorted(os.listdir(run / E1)) == [".metadata", "__0_0.distcp", "meta.pt"]


def test_prune_never_removes_the_last_ckpt_target(tmp_path):
    run = fsdp_run(tmp_path, extra=True)
    (run / "last.ckpt").unlink()
    os.symlink(E0V1, run / "last.ckpt")  # a stale link: names an older step
    result = invoke("prune", run, "--keep-last", "0", "--yes", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["removed"] == []
    assert {k["name"] for k in doc["keep"]} >= {E0, E1, E0V1}
    assert (run / E0V1 / "meta.pt").is_file()


def test_prune_incomplete_directory_only_with_remove_incomplete(tmp_path):
    run = fsdp_run(tmp_path, extra=True)
    (run / E0V1 / "meta.pt").unlink()
    doc = json.loads(invoke("prune", run, "--keep-last", "1", "--yes", "--json").stdout)
    assert doc["removed"] == [] and (run / E0V1).is_dir()
    doc = json.loads(invoke("prune", run, "--keep-last", "1", "--remove-incomplete", "--yes", "--json").stdout)
    assert doc["removed"] == [E0V1] and not os.path.lexists(run / E0V1)


def test_resume_cmd_names_the_newest_complete_directory(tmp_path):
    run = fsdp_run(tmp_path)
    result = invoke("resume-cmd", run)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"--ckpt_path {run / E1}"
    (run / E1 / "meta.pt").unlink()  # the newest is incomplete now: resume from the one before
    result = invoke("resume-cmd", run)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"--ckpt_path {run / E0}"


def test_deepspeed_directories_list_validate_prune_resume(tmp_path):
    run = tmp_path / "ds"
    run.mkdir()
    for epoch, step in ((0, 5), (1, 10), (2, 15)):
        _deepspeed_dir(run / f"epoch={epoch}-step={step}.ckpt", epoch=epoch, step=step, score=0.5 - epoch / 10,
                       best="epoch=2-step=15.ckpt")  # fmt: skip
    found = rows(run)
    assert [found[n]["step"] for n in sorted(found)] == [5, 10, 15]
    assert found["epoch=2-step=15.ckpt"]["best"] is True
    assert invoke("validate", run).exit_code == 0
    assert invoke("resume-cmd", run).stdout.strip() == f"--ckpt_path {run / 'epoch=2-step=15.ckpt'}"
    doc = json.loads(invoke("prune", run, "--keep-last", "2", "--yes", "--json").stdout)
    assert doc["removed"] == ["epoch=0-step=5.ckpt"] and not os.path.lexists(run / "epoch=0-step=5.ckpt")
    assert (run / "epoch=1-step=10.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt").is_file()


def test_inspect_and_compare_read_the_dcp_part_as_one_and_meta_pt(tmp_path):
    run = fsdp_run(tmp_path)
    result = invoke("inspect", run / E0, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["layout"], doc["unit"]["step"]) == ("lightning", 4)
    assert "unreadable" not in result.stdout  # no shard file read as a zip of its own
    result = invoke("compare", run / E0, run / E1)
    assert result.exit_code in (0, 1), result.output  # the weights differ; nothing unreadable
    assert "error" not in result.output and "unreadable" not in result.output


def test_restore_repoints_a_dangling_last_link_at_the_newest_directory(tmp_path):
    run = fsdp_run(tmp_path)
    (run / "last.ckpt").unlink()
    os.symlink("epoch=9-step=99.ckpt", run / "last.ckpt")
    result = invoke("restore", run, "--yes")
    assert result.exit_code == 0, result.output
    assert os.readlink(run / "last.ckpt") == E1 and rows(run)["last.ckpt"]["status"] == "ok"


def test_restore_refuses_to_replace_a_damaged_last_directory_copy(tmp_path):
    run = fsdp_run(tmp_path)
    (run / "last.ckpt").unlink()
    shutil.copytree(run / E1, run / "last.ckpt")
    (run / "last.ckpt" / "meta.pt").unlink()
    result = invoke("restore", run, "--yes")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is a directory, not a file" in result.output
    assert sorted(os.listdir(run / "last.ckpt")) == [".metadata", "__0_0.distcp"]  # nothing changed
