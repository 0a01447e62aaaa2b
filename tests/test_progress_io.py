"""ProgressReader (ckptctl/formats/progress_io.py): torch.load reads through it, every byte is reported
once, in pieces of at most READ_CHUNK, into torch's own buffers."""

from __future__ import annotations

import io

import pytest
import torch

from ckptctl.formats.progress_io import ProgressReader


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_load_reads_through_it_in_pieces(tmp_path, legacy):
    gen = torch.Generator().manual_seed(0)
    state = {"model": {"big": torch.randn(3 << 18, generator=gen), "small": torch.randn(100, generator=gen)}, "step": 3}
    path = tmp_path / "a.pt"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    sizes: list[int] = []
    with open(path, "rb") as fh:
        reader = ProgressReader(fh, sizes.append, chunk=1 << 18)
        loaded = torch.load(reader, weights_only=True)
    assert torch.equal(loaded["model"]["big"], state["model"]["big"]) and loaded["step"] == 3
    assert all(0 < n <= 1 << 18 for n in sizes) and sum(sizes) == reader.bytes_read
    assert sum(sizes) >= path.stat().st_size - 4096  # every stored byte (the zip reader re-reads a few headers)
    assert len(sizes) >= 12  # the 3 MiB storage arrived in 256 KiB pieces, each reported


def test_reads_seeks_and_the_end_of_the_file():
    sizes: list[int] = []
    reader = ProgressReader(io.BytesIO(b"abcdefghij"), sizes.append, chunk=3)
    assert reader.read(2) == b"ab" and reader.tell() == 2
    buffer = bytearray(6)
    assert reader.readinto(buffer) == 6 and bytes(buffer) == b"cdefgh"
    assert reader.read() == b"ij" and reader.read(5) == b"" and reader.readinto(bytearray(4)) == 0
    reader.seek(0)
    assert reader.read(-1) == b"abcdefghij"
    assert sizes == [2, 3, 3, 2, 10] and reader.bytes_read == 20
    assert reader.readable() and reader.seekable()
    with pytest.raises(OSError):
        reader.fileno()  # torch must not read the descriptor behind the counter's back
