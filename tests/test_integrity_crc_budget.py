"""validate's CRC work never exceeds the file's size, whatever the records claim."""

from __future__ import annotations

import io

import pytest

from ckptctl.formats.container import Record
from ckptctl.errors import UnreadableCheckpoint
from ckptctl.ops.integrity import crc_records, crc_records_stream, validate_file
from tests import hostile

SIZE = 1 << 20
COPIES = 64


def test_overlapping_records_cost_no_more_crc_work_than_the_file_holds(tmp_path):
    """64 central headers naming one 1 MiB record: 64 MiB of CRC work from a 1 MiB file before."""
    path = hostile.overlapping_zip(tmp_path / "latest.pt", COPIES, SIZE)
    checked: list[int] = []
    result = validate_file(path, progress=checked.append)
    assert sum(checked) <= path.stat().st_size and result.bytes_checked <= path.stat().st_size
    assert result.status == "unsafe"
    assert any("ambiguous archive" in p and "names differ" in p for p in result.problems)


def _overlapping_records(size: int) -> list[Record]:
    return [Record(f"a/data/{i}", f"data/{i}", 0, 0, size, 0) for i in range(COPIES)]


def test_crc_planning_refuses_records_larger_than_the_file(tmp_path):
    """The hard bound itself, below the container's refusal: nothing is read."""
    path = tmp_path / "blob"
    path.write_bytes(bytes(SIZE))
    checked: list[int] = []
    with open(path, "rb") as fh, pytest.raises(UnreadableCheckpoint, match="more than the file's"):
        crc_records(fh.fileno(), _overlapping_records(SIZE), progress=checked.append)
    with pytest.raises(UnreadableCheckpoint, match="more than the file's"):
        crc_records_stream(io.BytesIO(bytes(SIZE)), _overlapping_records(SIZE), progress=checked.append)
    assert checked == []


def test_records_that_fit_are_still_checked(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(SIZE))
    records = [Record("a/x", "x", 0, 0, SIZE // 2, 0), Record("a/y", "y", 0, SIZE // 2, SIZE // 2, 0)]
    with open(path, "rb") as fh:
        assert set(crc_records(fh.fileno(), records)) == {"x", "y"}
