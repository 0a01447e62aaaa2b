"""Losses saved as one-element tensors are numbers: read from their bytes (no torch), bounded, checked."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptctl.ops import listing_cache
from ckptctl.formats import scalars
from ckptctl.layouts.catalog import entry_for_file
from ckptctl.cli.app import app
from ckptctl.layouts.metadata import MAX_EXTRA_SCALARS, summarize
from ckptctl.formats.reader import read_checkpoint
from ckptctl.formats.scalars import read_scalars

torch = pytest.importorskip("torch")

runner = CliRunner()
DTYPES = ["float32", "bfloat16", "float64", "float16", "int64", "int32", "uint8"]


def _tensor(value: float, dtype: str) -> torch.Tensor:
    return torch.tensor(value, dtype=getattr(torch, dtype))


def _manager_dir(directory: Path, losses: dict[int, tuple[float, str]]) -> Path:
    """One manager save per step, val_loss (and train_loss = 2 * val_loss) as 0-d tensors of a dtype."""
    from ckptctl.training.manager import CheckpointManager, build_state

    model = torch.nn.Linear(2, 2)
    mgr = CheckpointManager(directory, keep_last_n=10, monitor_every=0)
    for step, (loss, dtype) in losses.items():
        state = build_state(step=step, epoch=0, model=model, train_loss=_tensor(2 * loss, dtype),
                            val_loss=_tensor(loss, dtype))  # fmt: skip
        mgr.save(state, step=step)
    return directory


@pytest.fixture(scope="module")
def by_dtype(tmp_path_factory) -> Path:
    """A file per dtype: val_loss 0.3 (1 for ints), train_loss twice that, best_metric a 1-element tensor."""
    directory = tmp_path_factory.mktemp("scalars")
    for dtype in DTYPES:
        value = 0.3 if "float" in dtype else 1
        torch.save({"step": 1, "val_loss": _tensor(value, dtype), "train_loss": _tensor(2 * value, dtype),
                    "best_metric": torch.tensor([0.875]), "model": {"w": torch.zeros(3)}}, directory / f"{dtype}.pt")  # fmt: skip
    return directory


@pytest.mark.parametrize("spans", [True, False], ids=["spans", "listing-fast-path"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_losses_are_the_numbers_torch_holds(by_dtype, dtype, spans):
    path = by_dtype / f"{dtype}.pt"
    meta = summarize(read_checkpoint(path, spans=spans))
    loaded = torch.load(path)
    assert meta.val_loss == loaded["val_loss"].item() and meta.train_loss == loaded["train_loss"].item()
    assert meta.extra_numbers == {"best_metric": 0.875}


def test_legacy_format(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"step": 3, "val_loss": torch.tensor(0.25, dtype=torch.float64), "train_loss": torch.tensor([1.5])},
               path, _use_new_zipfile_serialization=False)  # fmt: skip
    meta = summarize(read_checkpoint(path))
    assert (meta.val_loss, meta.train_loss) == (0.25, 1.5)


def test_view_into_a_larger_storage(tmp_path):
    """``val_loss = losses[37]`` keeps the whole storage; only the element's bytes are read."""
    losses = torch.arange(100, dtype=torch.float32) / 8
    path = tmp_path / "view.pt"
    torch.save({"val_loss": losses[37], "train_loss": losses[5:6]}, path)
    for spans in (True, False):
        meta = summarize(read_checkpoint(path, spans=spans))
        assert (meta.val_loss, meta.train_loss) == (37 / 8, 5 / 8)


def test_big_endian_archive(tmp_path):
    """The archive's ``byteorder`` record decides: a big-endian writer's bytes decode the same."""
    source, path = tmp_path / "little.pt", tmp_path / "big.pt"
    torch.save({"val_loss": torch.tensor(0.75, dtype=torch.float64), "train_loss": torch.tensor(2.5, dtype=torch.bfloat16)}, source)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            name = info.filename.split("/", 1)[1]
            if name == "byteorder":
                data = b"big"
            elif name.startswith("data/"):
                data = data[::-1]  # one element per storage: reversing it swaps its byte order
            zout.writestr(info.filename, data)
    assert read_scalars(read_checkpoint(path), {"v": read_checkpoint(path).root["val_loss"]}) == {"v": 0.75}
    meta = summarize(read_checkpoint(path, spans=False))
    assert (meta.val_loss, meta.train_loss) == (0.75, 2.5)


def test_damaged_scalar_bytes_give_no_number(tmp_path):
    """A flipped bit in the loss's record fails its CRC-32: no number, rather than a wrong one."""
    path = tmp_path / "a.pt"
    torch.save({"val_loss": torch.tensor(0.5), "train_loss": torch.tensor(0.25)}, path)
    ckpt = read_checkpoint(path)
    span = ckpt.spans[ckpt.root["val_loss"].storage.key]
    with open(path, "r+b") as fh:
        fh.seek(span.offset)
        byte = fh.read(1)[0]
        fh.seek(span.offset)
        fh.write(bytes([byte ^ 0x01]))
    meta = summarize(read_checkpoint(path, spans=False))
    assert (meta.val_loss, meta.train_loss) == (None, 0.25)


def test_file_replaced_after_reading_gives_no_number(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"val_loss": torch.tensor(0.5)}, path)
    ckpt = read_checkpoint(path, spans=False)
    torch.save({"val_loss": torch.tensor(0.5), "extra": torch.zeros(10)}, path)  # other size, other offsets
    assert read_scalars(ckpt, ckpt.root) == {}
    path.unlink()
    assert read_scalars(ckpt, ckpt.root) == {}


def test_fifo_in_place_of_the_file_does_not_block(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"val_loss": torch.tensor(0.5)}, path)
    ckpt = read_checkpoint(path, spans=False)
    path.unlink()
    os.mkfifo(path)
    assert read_scalars(ckpt, ckpt.root) == {}  # O_NONBLOCK open, then refused: not a regular file


def test_work_is_bounded_for_a_file_full_of_scalars(tmp_path, monkeypatch):
    """Thousands of top-level 0-d tensors: the listing reads the two losses, inspect at most a few more."""
    path = tmp_path / "many.pt"
    state = {f"m{i}": torch.tensor(float(i)) for i in range(2000)}
    state.update(val_loss=torch.tensor(0.5), train_loss=torch.tensor(0.25), big=torch.zeros(64))  # big: not a scalar
    torch.save(state, path)
    reads = []
    real_pread = scalars.pread
    monkeypatch.setattr(scalars, "pread", lambda fh, offset, size: reads.append(size) or real_pread(fh, offset, size))
    meta = summarize(read_checkpoint(path, spans=False))
    assert (meta.val_loss, meta.train_loss) == (0.5, 0.25)
    per_record = 3  # local header, its name, the record
    assert len(reads) <= per_record * 3 and max(reads) <= scalars.CHECKED_RECORD_BYTES
    reads.clear()
    assert meta.extra_numbers == {f"m{i}": float(i) for i in range(MAX_EXTRA_SCALARS)}
    assert len(reads) <= per_record * (MAX_EXTRA_SCALARS + 1)


def test_only_one_element_tensors_are_numbers(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"val_loss": torch.tensor([0.5, 0.25]), "train_loss": torch.tensor(True), "score": torch.zeros(2, 1)}, path)
    meta = summarize(read_checkpoint(path))
    assert (meta.val_loss, meta.train_loss, meta.extra_numbers) == (None, None, {})


# --------------------------------------------------------------------------- what users see


@pytest.fixture(scope="module")
def tensor_loss_dir(tmp_path_factory) -> Path:
    """Five manager saves whose losses are 0-d tensors of three dtypes (as the README's loop passes them)."""
    return _manager_dir(tmp_path_factory.mktemp("tensor-losses") / "ckpt", {
        100: (0.5, "float32"), 200: (0.25, "bfloat16"), 300: (0.75, "float64"), 400: (0.125, "float32"),
        500: (1.0, "bfloat16")})  # fmt: skip


def test_list_json_shows_tensor_losses(tensor_loss_dir):
    result = runner.invoke(app, ["list", str(tensor_loss_dir), "--json", "--kind", "rolling"])
    assert result.exit_code == 0, result.output
    rows = {row["step"]: row for row in json.loads(result.stdout)["checkpoints"]}
    assert {step: row["val_loss"] for step, row in rows.items()} == {100: 0.5, 200: 0.25, 300: 0.75, 400: 0.125, 500: 1.0}
    assert rows[300]["train_loss"] == 1.5


def test_list_sorts_by_tensor_val_loss_and_draws_the_trend(tensor_loss_dir):
    result = runner.invoke(app, ["list", str(tensor_loss_dir), "--json", "--kind", "rolling", "--sort", "val_loss"])
    rows = [row for row in json.loads(result.stdout)["checkpoints"] if row["name"].startswith("rolling_step_")]
    assert [row["step"] for row in rows] == [400, 200, 100, 300, 500]
    text = runner.invoke(app, ["list", str(tensor_loss_dir)]).stdout
    assert "val_loss by step 100..500:" in text and "0.5 -> 1" in text


def test_prune_keep_best_k_keeps_the_lowest_tensor_losses(tmp_path):
    directory = _manager_dir(tmp_path / "ckpt", {step: (loss, "bfloat16") for step, loss in
                                                 zip(range(100, 700, 100), (0.5, 0.125, 0.75, 0.25, 0.9, 0.8))})  # fmt: skip
    result = runner.invoke(app, ["prune", str(directory), "--keep-rolling", "1", "--keep-best-k", "2", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    kept = {k["name"] for k in doc["keep"] if k["kind"] == "rolling"}
    assert kept == {"rolling_step_000200.pt", "rolling_step_000400.pt", "rolling_step_000600.pt"}


def test_inspect_shows_tensor_losses_and_metrics(tmp_path):
    path = tmp_path / "rolling_step_000007.pt"
    torch.save({"step": 7, "val_loss": torch.tensor(0.375, dtype=torch.bfloat16), "train_loss": torch.tensor(0.5),
                "best_metric": torch.tensor(0.9375, dtype=torch.float64)}, path)  # fmt: skip
    doc = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).stdout)
    assert (doc["val_loss"], doc["train_loss"], doc["extra"]) == (0.375, 0.5, {"best_metric": 0.9375})
    text = runner.invoke(app, ["inspect", str(path)]).stdout
    assert "val_loss        0.375" in text and "best_metric" in text and "0.9375" in text


def test_listing_cache_fingerprint_covers_the_scalar_reader(tmp_path, monkeypatch):
    """A cache written before tensor losses were read (val_loss null) must not survive a reader change."""
    import shutil

    package = Path(listing_cache.__file__).parent.parent
    shutil.copytree(package, tmp_path / "ckptctl", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(listing_cache, "__file__", str(tmp_path / "ckptctl" / "ops" / "listing_cache.py"))
    before = listing_cache.reader_fingerprint()
    with open(tmp_path / "ckptctl" / "formats" / "scalars.py", "a") as fh:
        fh.write("# changed\n")
    assert listing_cache.reader_fingerprint() != before


def test_entry_metadata_reads_tensor_losses(tensor_loss_dir):
    meta = entry_for_file(tensor_loss_dir / "rolling_step_000200.pt").metadata
    assert (meta.val_loss, meta.train_loss) == (0.25, 0.5)
