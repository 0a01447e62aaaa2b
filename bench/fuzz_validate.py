"""Long bit-flip and truncation fuzz of ``validate`` over a real checkpoint (CI runs a bounded one).

Run: ``/work/venv/bin/python bench/fuzz_validate.py [--flips 20000] [--seed 1] [--no-crc-flips 3000]``

For every flip the verdict is classified by where the flipped byte lies (record data covered by
CRC-32, local headers, alignment padding, data descriptors, central directory, end records).
Must hold: 0 exceptions, 0 "valid" verdicts for flips inside CRC-covered bytes, every truncation
invalid. Flips outside CRC-covered bytes are reported as detection rates: a flip in a field no
reader uses (alignment padding, timestamps of the central directory, attributes) changes nothing
torch would read and may be undetectable. A second loop flips bits in the pickle of a checkpoint
written with CRC-32 switched off, to fuzz the restricted unpickler itself (no crash, no execution).
"""

from __future__ import annotations

import argparse
import collections
import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckptctl.ops.integrity import validate_file  # noqa: E402
from tests.corruption import LOCAL_HEADER, Layout, flip  # noqa: E402
from tests.factories import write_checkpoint  # noqa: E402


def regions(layout: Layout) -> list[str]:
    """The region of every byte of the file."""
    data = layout.data
    where = ["other"] * len(data)
    for header, offset, size in layout.records.values():
        name_len, extra_len = struct.unpack_from("<HH", data, header + 26)
        where[header : header + LOCAL_HEADER.size] = ["local header"] * LOCAL_HEADER.size
        name_end = header + LOCAL_HEADER.size + name_len
        where[header + LOCAL_HEADER.size : name_end] = ["local name"] * name_len
        where[name_end : name_end + 4] = ["local extra header"] * min(4, extra_len)
        where[name_end + 4 : offset] = ["alignment padding"] * max(0, offset - name_end - 4)
        where[offset : offset + size] = ["record data (CRC)"] * size
        where[offset + size : offset + size + 16] = ["data descriptor"] * 16
    where[layout.start_dir : layout.eocd] = ["central directory / zip64 end"] * (layout.eocd - layout.start_dir)
    where[layout.eocd :] = ["end record"] * (len(data) - layout.eocd)
    return where


def flips(path: Path, data: bytes, count: int, rng: random.Random) -> tuple[collections.Counter, list[str], int]:
    layout = Layout.of(data)
    where = regions(layout)
    stats: collections.Counter = collections.Counter()
    failures: list[str] = []
    crashes = 0
    for _ in range(count):
        at, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
        path.write_bytes(flip(data, at, bit))
        try:
            result = validate_file(path)
        except Exception:  # noqa: BLE001 - any exception is a finding of this fuzz
            crashes += 1
            failures.append(f"exception at byte {at}: {traceback.format_exc(limit=3)}")
            continue
        stats[(where[at], result.valid)] += 1
        if result.valid and where[at] == "record data (CRC)":
            failures.append(f"false valid: flip of bit {bit:#x} at byte {at} (CRC-covered)")
    return stats, failures, crashes


def truncations(path: Path, data: bytes, step: int) -> list[str]:
    failures = []
    for cut in range(0, len(data), step):
        path.write_bytes(data[:cut])
        result = validate_file(path)
        if result.valid:
            failures.append(f"truncated to {cut} bytes reported valid")
    return failures


def pickle_flips(path: Path, count: int, rng: random.Random) -> tuple[collections.Counter, int]:
    """Flips inside data.pkl of a CRC-less file: only the unpickler stands between damage and a verdict."""
    import torch

    torch.serialization.set_crc32_options(False)
    try:
        source = write_checkpoint(path.with_name("nocrc_src.pt"))
    finally:
        torch.serialization.set_crc32_options(True)
    data = source.read_bytes()
    _header, offset, size = Layout.of(data).records["data.pkl"]
    _limit_address_space(1 << 30)
    outcome: collections.Counter = collections.Counter()
    crashes = 0
    for _ in range(count):
        path.write_bytes(flip(data, rng.randrange(offset, offset + size), 1 << rng.randrange(8)))
        try:
            result = validate_file(path)
        except Exception:  # noqa: BLE001
            crashes += 1
            continue
        outcome["valid" if result.valid else result.problems[0].split(":")[0]] += 1
    return outcome, crashes


def _limit_address_space(extra: int) -> None:
    """Cap this process at its current size + ``extra``: a flipped memo index in a pickle makes the
    C unpickler try to allocate up to 64 GiB (see the report); capped, it fails fast with
    MemoryError ("pickle too large to read") instead of thrashing a shared machine."""
    import resource

    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=20000)
    parser.add_argument("--no-crc-flips", type=int, default=3000)
    parser.add_argument("--truncate-step", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckptctl-fuzz-") as tmp:
        source = write_checkpoint(Path(tmp) / "src" / "latest.pt", step=300, epoch=2)
        data = source.read_bytes()
        target = Path(tmp) / "latest.pt"
        stats, failures, crashes = flips(target, data, args.flips, rng)
        failures += truncations(target, data, args.truncate_step)
        outcome, pickle_crashes = pickle_flips(Path(tmp) / "latest.pt", args.no_crc_flips, rng)
    print(f"{args.flips} single-bit flips over a {len(data)}-byte checkpoint (seed {args.seed}):")
    print(f"  {'region':<32}{'flips':>7}{'invalid':>9}{'detected':>10}")
    for region in sorted({r for r, _v in stats}):
        total = stats[(region, True)] + stats[(region, False)]
        detected = stats[(region, False)]
        print(f"  {region:<32}{total:>7}{detected:>9}{detected / total:>9.1%}")
    false_valid = sum(1 for f in failures if f.startswith("false valid"))
    truncation_misses = sum(1 for f in failures if f.startswith("truncated"))
    print(f"  exceptions: {crashes}   false 'valid' on CRC-covered flips: {false_valid}")
    print(f"truncations every {args.truncate_step} bytes ({len(range(0, len(data), args.truncate_step))}): "
          f"{truncation_misses} reported valid")  # fmt: skip
    print(f"{args.no_crc_flips} flips inside data.pkl of a CRC-less checkpoint: {pickle_crashes} exceptions; verdicts "
          + ", ".join(f"{k}: {v}" for k, v in outcome.most_common(6)))  # fmt: skip
    print(f"{time.perf_counter() - started:.1f} s")
    for failure in failures[:20]:
        print("FAIL", failure)
    sys.exit(1 if failures or crashes or pickle_crashes else 0)


if __name__ == "__main__":
    main()
