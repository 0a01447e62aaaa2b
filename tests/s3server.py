"""A real S3-compatible endpoint on loopback (moto's standalone server), for tests and bench/bench_s3.py.

``Endpoint`` starts moto's threaded server on 127.0.0.1 (a free port) and, in front of it, a
byte-counting TCP proxy: every byte the endpoint sends back to a client passes through it, so
"how much did ``ckptctl list`` read" is measured on the wire, not estimated. Clients (s3fs in this
process or in a ``ckptctl`` subprocess) find it through ``AWS_ENDPOINT_URL``; credentials are
moto's dummy ones.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

CLIENT_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class CountingProxy:
    """Forward TCP connections to ``target``; count the bytes sent back (responses: headers + bodies).

    ``latency`` seconds are added before each request is forwarded: loopback has no round trip,
    a real bucket has tens of milliseconds of it (bench/bench_s3.py --latency-ms).
    """

    def __init__(self, target: tuple[str, int], latency: float = 0.0):
        self.target = target
        self.latency = latency
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bytes_served = 0
        self.requests = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.requests = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                if count:
                    with self._lock:
                        self.bytes_served += len(data)
                elif data[:4] in (b"GET ", b"HEAD", b"PUT ", b"POST", b"DELE"):
                    with self._lock:
                        self.requests += 1
                    if self.latency:
                        time.sleep(self.latency)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


class Endpoint:
    """moto's S3 server on loopback behind a CountingProxy; ``env`` is what a client process needs."""

    def __init__(self, latency: float = 0.0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.proxy = CountingProxy((host, port), latency)
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        self.env = {**CLIENT_ENV, "AWS_ENDPOINT_URL": self.url}

    def filesystem(self):
        """An s3fs file system talking to this endpoint (not the cached instance: no stale listings)."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.url, key="testing", secret="testing", skip_instance_cache=True)

    def upload(self, local: Path, url: str) -> str:
        """Copy the files of ``local`` (not subdirectories) to ``s3://bucket/prefix``; make the bucket if needed."""
        fs = self.filesystem()
        key = url.removeprefix("s3://").rstrip("/")
        bucket = key.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for path in sorted(local.iterdir()):
            if path.is_file():
                fs.put_file(str(path), f"{key}/{path.name}")
        return url.rstrip("/")

    def stop(self) -> None:
        self.proxy.close()
        self.server.stop()


def apply_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set ``env`` in this process; return the previous values for :func:`restore_env`."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
