#!/usr/bin/env python3
"""Benchmark ``ckptctl`` on ``s3://`` URLs: bytes read at the endpoint, and time against the local copy.

    .venv/bin/python bench/bench_s3.py [--files 10] [--mb 20] [--runs 3] [--crc]

A directory of N real ``torch.save`` checkpoints of about MB megabytes each (the seed's dict:
model, AdamW state, RNG states, args) is uploaded to moto's S3 server on loopback. Every byte the
endpoint sends back passes through a counting TCP proxy (tests/s3server.py), so the figures are
measured on the wire (HTTP headers included), not estimated. For ``list``, ``validate --quick``
and ``du`` (with ``--crc`` also ``validate`` at the default level, ~1 min more) as ``ckptctl``
subprocesses: bytes served / total object bytes, requests, and the wall time of the counted
run against the best of RUNS of the same command on the local copy.

Target: ``ckptctl list s3://...`` reads <= 1% of the bytes of the checkpoints it lists.
Loopback has no network latency; on a real bucket each request costs a round trip, so the
request count matters as much as the bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CKPTCTL = Path(sys.executable).with_name("ckptctl")

from bench_list import write_dir  # noqa: E402  (bench/ is on sys.path when run as a script)

from tests.s3server import Endpoint  # noqa: E402

COMMANDS = (("list", ["list"]), ("validate --quick", ["validate", "--quick"]), ("du", ["du"]))
CRC_COMMAND = ("validate", ["validate"])


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([str(CKPTCTL), *args], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"ckptctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--mb", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--crc", action="store_true", help="also validate at the default level (streams every byte)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="round trip added per request for the concurrency comparison (0: skip it)")  # fmt: skip
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_s3_"))
    endpoint = Endpoint()
    try:
        local = workdir / "checkpoints"
        total = write_dir(local, options.files, options.mb)
        url = endpoint.upload(local, "s3://bench/run/checkpoints")
        env = {**os.environ, **endpoint.env}
        print(f"{options.files} checkpoints, {total / 2**20:.1f} MiB in all ({total / options.files / 2**20:.1f} MiB each), "
              f"at {url} (moto on loopback, counting proxy)")  # fmt: skip
        print(f"{'command':<18}{'bytes read':>14}{'of objects':>12}{'requests':>10}{'s3 wall':>10}{'local wall':>12}{'ratio':>8}")
        for label, args in COMMANDS + ((CRC_COMMAND,) if options.crc else ()):
            endpoint.proxy.reset()
            remote = run([*args, url], env)  # the counted run
            served, requests = endpoint.proxy.bytes_served, endpoint.proxy.requests
            here = min(run([*args, str(local)], env) for _ in range(options.runs))
            print(f"{label:<18}{served:>14,}{served / total:>11.3%} {requests:>9}{remote:>9.2f}s{here:>11.2f}s{remote / here:>7.1f}x")
            if label == "list":
                share = served / total
        print(f"target: list reads <= 1% of the object bytes: {share:.3%} -> {'PASS' if share <= 0.01 else 'FAIL'}")
        if options.latency_ms:
            compare_concurrency(endpoint, url, options.latency_ms / 1000, options.runs)
    finally:
        endpoint.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def compare_concurrency(endpoint, url: str, latency: float, runs: int) -> None:
    """``list`` in this process with a round trip added to every request (loopback has none): the
    listing's concurrent reads (ckptctl.ops.listing.REMOTE_READERS) against one object at a time."""
    sys.path.insert(0, str(ROOT))
    from ckptctl.ops import listing

    os.environ.update(endpoint.env)
    default, times = listing.REMOTE_READERS, {}
    endpoint.proxy.latency = latency
    try:
        for _ in range(runs):
            for readers in (1, default):
                listing.REMOTE_READERS = readers
                start = time.perf_counter()
                listing.list_checkpoints(url)
                times.setdefault(readers, []).append(time.perf_counter() - start)
    finally:
        listing.REMOTE_READERS, endpoint.proxy.latency = default, 0.0
    one, many = min(times[1]), min(times[default])
    print(f"list with {latency * 1000:.0f} ms added per request (in-process, best of {runs}): one object at a time "
          f"{one:.2f} s, {default} at once {many:.2f} s -> {one / many:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
