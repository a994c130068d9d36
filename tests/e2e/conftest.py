"""End-to-end fixtures: a real ``bus gateway run`` child process and an HTTP client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bus.dev.brokers import free_port
from bus.dev.processes import settings_env, terminate
from bus.edge.gateway.keys import issue_key, keys_path
from bus.settings import Settings


@dataclass
class Gateway:
    """A running gateway and an HTTP client pointed at it."""

    url: str
    http: httpx.Client
    settings: Settings

    def key(self, department: str) -> dict[str, str]:
        """Authorization header with a fresh key for ``department``."""
        key = issue_key(keys_path(self.settings.data_dir), department)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[Gateway]:
    port = free_port()
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    log_file = tmp_path / "gateway.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli.gateway", "run", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_file.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/healthz").status_code == 200:
                        break
                assert time.monotonic() < deadline, "gateway not healthy:\n" + log_file.read_text()
                time.sleep(0.1)
            yield Gateway(url, http, settings)
    finally:
        terminate(proc, 15)
