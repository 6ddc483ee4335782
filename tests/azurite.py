"""Azurite's Table service for the tests: one already listening, or one started here.

``make test`` installs Azurite into the repository's node_modules when npm exists;
``table_service()`` then starts it on a free port, in memory, and stops it (SIGTERM to
that node process) at the end of the session. Without it, the Table tests are skipped
(and fail under CI, where a skip would hide that the real store went untested).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

AZURITE_VERSION = "3.35.0"
ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "node_modules" / "azurite" / "dist" / "src" / "table" / "main.js"
DEFAULT_PORT = 10002
ACCOUNT = "devstoreaccount1"
# The well-known development key of Azurite and the storage emulator, published in
# Microsoft's documentation: it is not a secret and opens nothing outside this machine.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_SECONDS = 20.0
UNAVAILABLE = (
    f"Azurite not available: run `npm install azurite@{AZURITE_VERSION}` in the repository "
    f"(or `make test`, which does it when npm exists), or start its Table service on "
    f"127.0.0.1:{DEFAULT_PORT}"
)


@dataclass(frozen=True)
class Azurite:
    """A Table service endpoint of Azurite on 127.0.0.1."""

    port: int
    started_here: bool

    @property
    def endpoint(self) -> str:
        """The account's table endpoint."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """A connection string for the development account on this port."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.endpoint};"
        )

    def drop_table(self, name: str) -> None:
        """Delete a table if it exists (a test's own, at its end)."""
        from azure.data.tables import TableServiceClient

        service = TableServiceClient.from_connection_string(
            self.connection_string, connection_timeout=2, read_timeout=5, retry_total=0
        )
        try:
            service.delete_table(name)
        finally:
            service.close()


def fresh_table_name() -> str:
    """A table name no other test uses (letters and digits, starting with a letter)."""
    return f"t{uuid.uuid4().hex}"


def listening(port: int, *, timeout: float = 0.25) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def table_service() -> Iterator[Azurite]:
    """An Azurite Table service for the session; skips (fails under CI) without one."""
    if listening(DEFAULT_PORT):
        yield Azurite(DEFAULT_PORT, started_here=False)
        return
    node = shutil.which("node")
    if node is None or not MAIN.is_file():
        missing = "node" if node is None else f"{MAIN.relative_to(ROOT)}"
        reason = f"{UNAVAILABLE} ({missing} not found)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(  # noqa: S603 - our own node and the installed Azurite
            [
                node,
                str(MAIN),
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                str(port),
                "--inMemoryPersistence",
                "--silent",
                "--disableTelemetry",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            _wait_until_listening(process, port, errors)
            yield Azurite(port, started_here=True)
        finally:
            process.terminate()  # SIGTERM to the node process itself, by its id
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, errors: IO[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not listening(port):
        if process.poll() is not None:
            errors.seek(0)
            output = errors.read().decode("utf-8", "replace")[-2000:]
            pytest.fail(f"Azurite exited with {process.returncode} on start: {output}")
        if time.monotonic() > deadline:
            pytest.fail(f"Azurite did not listen on 127.0.0.1:{port} within {START_SECONDS} s")
        time.sleep(0.05)
