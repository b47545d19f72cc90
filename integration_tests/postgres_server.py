"""A private, throwaway PostgreSQL server a test may stop and start again (a restart, an outage),
made like scripts/with-postgres.sh makes the shared one: a fresh data directory, a free 127.0.0.1 port."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not versions:
            raise RuntimeError("PostgreSQL is not installed (scripts/ensure-system-deps.sh)")
        self.bin = Path(versions[-1])
        self.root = Path(tempfile.mkdtemp(prefix="perly-pg-own-"))
        self.port = free_port()
        # initdb refuses to run as root: run the server as `postgres`, as with-postgres.sh does.
        self.as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_server:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.root / "db"), "-U", "perly", "--auth=trust")
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://perly@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_server, str(self.bin / tool), *args], check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.root / "db"), "-l", str(self.root / "log"), "-w", *args)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._ctl("-o", options, "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a real restart or failover."""
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        subprocess.run(
            [
                *self.as_server,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.root / "db"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        server.remove()
